"""Batched post-processing of universal segmentation outputs, on the model's device.

The results equal those of the transformers image processors' ``post_process_*_segmentation``
(same segments, ids and labels; scores and id maps up to float rounding), without their
per-query Python loops and without ever holding a (queries, height, width) tensor at the
target resolution.

How: a target pixel's value is a short chain of separable linear resamplings (bilinear,
maybe antialiased) of a few mask logits, with a monotone sigmoid in between and a positive
score as a factor. So the minimum and maximum logit under a tile of the target bound every
pixel value in that tile. Per tile, queries that cannot win the argmax (nor straddle the mask
threshold) are settled from those bounds; the rest get their values on the tile's mid window
(tighter bounds, settling more), and only what is still open is resampled to the target, in
chunks of bounded size (`max_chunk_pixels`, tiles of `tile` x `tile` target pixels). Exact
values follow ``torch.nn.functional.interpolate``'s order of operations and fused
multiply-adds, so on the CPU they are its values bit for bit (antialiased downsampling aside).

Which model family uses which variant (``family=``):

============  ======================  ==============================  ========================
family        before the target size  resize to the target size       instance task
============  ======================  ==============================  ========================
mask2former   bilinear to 384x384     bilinear                        top-k (query, class) by
                                                                      class x mean mask prob,
                                                                      nearest resize, later
                                                                      instances overwrite
maskformer    none                    bilinear                        as mask2former
oneformer     none                    bilinear, antialiased           top-k class scores, then
                                      (torchvision ``resize``)        the panoptic merge on
                                                                      mask logits
============  ======================  ==============================  ========================

Deliberate differences from transformers:

- Ids: 0 is void and segment ids are 1..N everywhere. Transformers' Mask2Former/MaskFormer
  instance ids start at 0 with -1 as background; where it returns -1 everywhere ("no
  segment") this returns all 0.
- Fusion (``label_ids_to_fuse``): transformers resets its id counter to a fused segment's
  id when a later query joins it, so the next new segment reuses an existing id; and it lists
  the fused segment once per joining query. Here ids stay unique (as in the original
  Mask2Former) and each fused segment is listed once, with its first query's score. Without a
  fused repeat followed by a new segment the ids are identical.
- Semantic results are one segment per present class (ids ascending by class, score None).
- Logits are post-processed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from segpipe.core.records import Segment

# Ties and rounding: bounds are widened by this relative amount (float32 resampling and
# sigmoid errors are a few ulps, ~1e-7); anything closer is evaluated exactly.
_BOUND_SLACK = 1e-5
DEFAULT_MAX_CHUNK_PIXELS = 1 << 22
DEFAULT_TILE = 16


@dataclass(frozen=True)
class Family:
    """What a model family's transformers processor does around the final resize."""

    mid_size: tuple[int, int] | None  # masks are first resized to this, then a sigmoid
    antialias: bool  # the final bilinear resize is antialiased (torchvision's resize)
    instance_by_merge: bool  # instance task: class-score top-k then the panoptic merge


FAMILIES: dict[str, Family] = {
    "mask2former": Family(mid_size=(384, 384), antialias=False, instance_by_merge=False),
    "maskformer": Family(mid_size=None, antialias=False, instance_by_merge=False),
    "oneformer": Family(mid_size=None, antialias=True, instance_by_merge=True),
}


@dataclass
class SegmentationResult:
    """One image's result: an id map on the model's device and its segments."""

    id_map: torch.Tensor  # (H, W) int32, 0 = void, segment ids 1..N
    segments: list[Segment]


# ----------------------------------------------------------------------------- resampling taps


@dataclass(frozen=True)
class _Taps:
    """Which source positions each output position reads, with which weights, in the order
    PyTorch's CPU kernels accumulate them: the first product, then fused multiply-adds."""

    index: torch.Tensor  # (out, T) int64
    weight: torch.Tensor  # (out, T) float32


def _bilinear_taps(src: int, out: int, device: torch.device) -> _Taps:
    """The taps of ``interpolate(mode="bilinear", align_corners=False)`` along one axis,
    rounded as PyTorch rounds them (the source position is one fused multiply-add)."""
    pos = torch.arange(out, dtype=torch.float64)
    if src == out:
        same = pos.long()
        weight = torch.tensor([0.0, 1.0]).expand(out, 2)
        return _Taps(torch.stack([same, same], 1).to(device), weight.to(device, torch.float32))
    scale = float(torch.tensor(src, dtype=torch.float32) / out)
    real = (scale * (pos + 0.5) - 0.5).float().clamp_min(0.0)
    first = real.floor().long().clamp_max(src - 1)
    frac = (real - first.float()).clamp(0.0, 1.0)
    second = first + (first < src - 1).long()
    # The kernel computes fma(x0, w0, x1 * w1): the second product comes first.
    index, weight = torch.stack([second, first], 1), torch.stack([frac, 1.0 - frac], 1)
    return _Taps(index.to(device), weight.to(device))


def _antialiased_taps(src: int, out: int, device: torch.device) -> _Taps:
    """The taps of ``interpolate(mode="bilinear", antialias=True)``: a triangle filter,
    stretched when downsampling, weights normalized; rounded as PyTorch rounds them and
    padded with zero weights."""
    if src == out:
        return _bilinear_taps(src, out, device)
    f32 = torch.float32
    scale = torch.tensor(src, dtype=f32) / out
    support = scale if scale >= 1.0 else torch.tensor(1.0, dtype=f32)
    inv_scale = (1.0 / scale.double()).float() if scale >= 1.0 else torch.tensor(1.0, dtype=f32)
    center = (scale.double() * (torch.arange(out, dtype=torch.float64) + 0.5)).float()
    start = ((center - support).double() + 0.5).trunc().long().clamp_min(0)
    stop = ((center + support).double() + 0.5).trunc().long().clamp_max(src)
    span = int((stop - start).max())
    index = start[:, None] + torch.arange(span)
    offset = ((index.float() - center[:, None]).double() + 0.5) * inv_scale.double()
    weight = (1.0 - offset.float().abs().double()).float().clamp_min(0.0)
    weight = torch.where(index < stop[:, None], weight, 0.0)
    total = weight[:, 0].clone()
    for tap in range(1, span):  # summed in order, in float32, as the kernel does
        total += weight[:, tap]
    weight = weight / total[:, None]
    index = torch.minimum(index, stop[:, None] - 1)
    return _Taps(index.to(device), weight.to(device))


def _nearest_index(src: int, out: int, device: torch.device) -> torch.Tensor:
    """The source index of ``interpolate(mode="nearest")`` along one axis."""
    pos = torch.arange(out, device=device)
    if src == out:
        return pos
    if out == 2 * src:
        return pos // 2
    scale = torch.tensor(src, dtype=torch.float32, device=device) / out
    return (pos.float() * scale).floor().long().clamp_max(src - 1)


# ------------------------------------------------------------------------------------ tiling


@dataclass(frozen=True)
class _AxisPlan:
    """How one target axis is read from the source, one tile of `tile` positions at a time.

    Indices in `mid_index` are relative to the tile's source window start, and those in
    `out_index` to its mid window start, so a tile's work only touches its own window.
    """

    size: int
    tile: int
    position: torch.Tensor  # (tiles, tile) target positions, the last repeated as padding
    valid: torch.Tensor  # (tiles, tile) bool: real positions, not padding
    window: torch.Tensor  # (tiles, span) source positions under the tile (repeats pad)
    mid_window: torch.Tensor  # (tiles, n_mid) mid positions under the tile (= window if no mid)
    mid_index: torch.Tensor | None  # (tiles, n_mid, T1) source -> mid taps, or no mid step
    mid_weight: torch.Tensor | None
    out_index: torch.Tensor  # (tiles, tile, T2) mid (or source) -> target taps
    out_weight: torch.Tensor

    @property
    def count(self) -> int:
        return self.valid.shape[0]


def _plan_axis(src: int, mid: int | None, out: int, tile: int, antialias: bool,
               device: torch.device) -> _AxisPlan:
    tiles = -(-out // tile)
    position = torch.arange(tiles * tile, device=device).view(tiles, tile)
    valid = position < out
    position = position.clamp_max(out - 1)
    final = (_antialiased_taps if antialias else _bilinear_taps)(mid or src, out, device)
    out_index = final.index[position]
    lo, hi = out_index.amin((1, 2)), out_index.amax((1, 2))
    out_index = out_index - lo[:, None, None]
    mid_index = mid_weight = None
    n_mid = int((hi - lo).max()) + 1
    mid_window = torch.minimum(lo[:, None] + torch.arange(n_mid, device=device), hi[:, None])
    if mid is not None:
        first = _bilinear_taps(src, mid, device)
        mid_index, mid_weight = first.index[mid_window], first.weight[mid_window]
        lo, hi = mid_index.amin((1, 2)), mid_index.amax((1, 2))
        mid_index = mid_index - lo[:, None, None]
    span = int((hi - lo).max()) + 1
    window = torch.minimum(lo[:, None] + torch.arange(span, device=device), hi[:, None])
    return _AxisPlan(out, tile, position, valid, window, mid_window, mid_index, mid_weight,
                     out_index, final.weight[position])


def _resample_rows(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                   ) -> torch.Tensor:
    """Resample (N, A, B) along A with per-item taps (N, n, T) into (N, n, B), rounding as
    PyTorch's kernels do: the first product, then fused multiply-adds (addcmul)."""
    n, a, b = values.shape
    rows = values.reshape(n * a, b)
    base = torch.arange(n, device=values.device)[:, None] * a
    out = None
    for t in range(index.shape[-1]):
        picked = rows.index_select(0, (base + index[:, :, t]).flatten())
        picked, w = picked.view(n, index.shape[1], b), weight[:, :, t, None]
        out = picked * w if out is None else torch.addcmul(out, picked, w)
    return out


def _resample_cols(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                   ) -> torch.Tensor:
    """Resample (N, A, B) along B; rows are cheaper to pick than columns, so transpose."""
    picked = _resample_rows(values.transpose(1, 2).contiguous(), index, weight)
    return picked.transpose(1, 2).contiguous()


@dataclass(frozen=True)
class _Grid:
    """The target, tiled; `between` is applied after the mid resize (a sigmoid)."""

    rows: _AxisPlan
    cols: _AxisPlan
    between: Callable[[torch.Tensor], torch.Tensor] | None

    @property
    def count(self) -> int:
        return self.rows.count * self.cols.count

    @property
    def pair_pixels(self) -> int:
        """The most values one (query, tile) pair holds at any step."""
        sizes = [self.rows.tile * self.cols.tile,
                 self.rows.window.shape[1] * self.cols.window.shape[1]]
        if self.rows.mid_index is not None:
            sizes.append(self.rows.mid_index.shape[1] * self.cols.mid_index.shape[1])
        return max(sizes)

    def split(self, tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tile // self.cols.count, tile % self.cols.count

    def tile_pixels(self) -> torch.Tensor:
        """(tiles,) count of real target pixels per tile, tiles in row-major order."""
        return (self.rows.valid.sum(1)[:, None] * self.cols.valid.sum(1)[None]).flatten()

    @property
    def padded(self) -> bool:
        """Whether the last tiles reach past the target (so padding must be masked)."""
        return self.rows.size % self.rows.tile != 0 or self.cols.size % self.cols.tile != 0

    def valid(self, tile: torch.Tensor) -> torch.Tensor:
        """(N, tile_h, tile_w) mask of real target pixels in the given tiles."""
        ty, tx = self.split(tile)
        return self.rows.valid[ty][:, :, None] & self.cols.valid[tx][:, None]

    def bounds(self, source: torch.Tensor, scores: torch.Tensor | None,
               max_values: int = DEFAULT_MAX_CHUNK_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds (tiles, K) of every query's value over every tile."""
        rows, cols = self.rows.window, self.cols.window
        step = max(1, max_values // (source.shape[0] * rows.shape[1] * source.shape[2]))
        parts = []
        for start in range(0, len(rows), step):  # bounded memory for huge targets
            window = rows[start:start + step]
            under = source.index_select(1, window.flatten()).unflatten(1, window.shape)
            lo, hi = under.amin(2), under.amax(2)  # (K, tile rows, w)
            lo = lo.index_select(2, cols.flatten()).unflatten(2, cols.shape).amin(3)
            hi = hi.index_select(2, cols.flatten()).unflatten(2, cols.shape).amax(3)
            parts.append((lo.flatten(1).T, hi.flatten(1).T))
        lo, hi = _widen(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        if self.between is not None and self.rows.mid_index is not None:
            lo, hi = _widen(self.between(lo), self.between(hi))
        if scores is not None:
            lo, hi = _widen(lo * scores, hi * scores)
        return lo, hi

    def mid_values(self, source: torch.Tensor, query: torch.Tensor,
                   tile: torch.Tensor) -> torch.Tensor:
        """(N, n_mid_y, n_mid_x) values of (query, tile) pairs on each tile's mid window
        (its source window when there is no mid step): all the final resize reads."""
        ty, tx = self.split(tile)
        rows, cols = self.rows, self.cols
        patch = _windows(source, query, rows.window[ty], cols.window[tx])
        if rows.mid_index is None:
            return patch
        # Width first, then height: the order of PyTorch's kernels, so the rounding matches.
        patch = _resample_cols(patch, cols.mid_index[tx], cols.mid_weight[tx])
        patch = _resample_rows(patch, rows.mid_index[ty], rows.mid_weight[ty])
        return patch if self.between is None else self.between(patch)

    def mid_windows(self, mid: torch.Tensor, query: torch.Tensor,
                    tile: torch.Tensor) -> torch.Tensor:
        """(N, n_mid_y, n_mid_x) windows of a mid-level tensor (K, mid_h, mid_w) per pair."""
        ty, tx = self.split(tile)
        return _windows(mid, query, self.rows.mid_window[ty], self.cols.mid_window[tx])

    def target_values(self, mid: torch.Tensor, scores: torch.Tensor | None,
                      query: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
        """(N, tile_h, tile_w) exact target values of (query, tile) pairs from `mid_values`."""
        ty, tx = self.split(tile)
        patch = _resample_cols(mid, self.cols.out_index[tx], self.cols.out_weight[tx])
        patch = _resample_rows(patch, self.rows.out_index[ty], self.rows.out_weight[ty])
        if scores is not None:
            patch = patch * scores[query][:, None, None]
        return patch

    def untile(self, tiled: torch.Tensor) -> torch.Tensor:
        """(tiles, tile_h, tile_w) per-tile pixels -> the (H, W) target."""
        rows, cols = self.rows, self.cols
        full = tiled.view(rows.count, cols.count, rows.tile, cols.tile).permute(0, 2, 1, 3)
        full = full.reshape(rows.count * rows.tile, cols.count * cols.tile)
        return full[: rows.size, : cols.size].contiguous()


def _windows(values: torch.Tensor, query: torch.Tensor, rows: torch.Tensor,
             cols: torch.Tensor) -> torch.Tensor:
    """(N, r, c): values[query[n]] at rows[n] x cols[n]."""
    height, width = values.shape[-2:]
    flat = (query * height)[:, None, None] + rows[:, :, None]
    return values.reshape(-1).take(flat * width + cols[:, None])


def _widen(lo: torch.Tensor, hi: torch.Tensor,
           slack: float = _BOUND_SLACK) -> tuple[torch.Tensor, torch.Tensor]:
    margin = slack * torch.maximum(lo.abs(), hi.abs()) + 1e-30
    return lo - margin, hi + margin


def _make_grid(source_size: tuple[int, int], mid_size: tuple[int, int] | None,
               target: tuple[int, int], *, antialias: bool, tile: int,
               between: Callable[[torch.Tensor], torch.Tensor] | None,
               device: torch.device) -> _Grid:
    mid_h, mid_w = mid_size if mid_size is not None else (None, None)
    rows = _plan_axis(source_size[0], mid_h, target[0], tile, antialias, device)
    cols = _plan_axis(source_size[1], mid_w, target[1], tile, antialias, device)
    return _Grid(rows, cols, between)


def _chunks_by_tile(tile: torch.Tensor, max_pairs: int) -> list[slice]:
    """Slices of the tile-sorted pairs, about `max_pairs` each, that never split a tile."""
    if len(tile) == 0:
        return []
    starts = torch.ones_like(tile, dtype=torch.bool)
    starts[1:] = tile[1:] != tile[:-1]
    run_start = starts.nonzero().flatten()
    first_of_chunk = torch.ones_like(run_start, dtype=torch.bool)
    first_of_chunk[1:] = (run_start[1:] // max_pairs) != (run_start[:-1] // max_pairs)
    bounds = run_start[first_of_chunk].tolist() + [len(tile)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# ---------------------------------------------------------------------------- argmax and areas


@dataclass
class _Resolved:
    """Per-pixel argmax over queries, stored per tile, with per-query pixel counts."""

    winner: torch.Tensor  # (tiles,) the query that wins the whole tile, -1 if mixed
    mixed_tiles: torch.Tensor  # (M,) tiles won by several queries
    mixed_labels: torch.Tensor  # (M, tile_h, tile_w) winning query per pixel
    area: torch.Tensor  # (K,) pixels each query wins
    threshold_area: torch.Tensor | None  # (K,) pixels where the value >= mask_threshold


def _resolve(grid: _Grid, bounds: tuple[torch.Tensor, torch.Tensor],
             mid_values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             scores: torch.Tensor | None, mask_threshold: float | None,
             max_chunk_pixels: int) -> _Resolved:
    """Argmax over queries of every target pixel (the first query wins ties, as in
    torch.argmax), and each query's count of pixels >= mask_threshold.

    Tiles are settled from bounds over their source windows where possible; the remaining
    (tile, query) pairs get their mid-window values, which give tighter bounds; only the
    pairs still undecided are resampled to the target.
    """
    lo, hi = bounds  # (tiles, K)
    num = lo.shape[1]
    pixels = grid.tile_pixels()
    best_lo, best = lo.max(1)
    if num > 1:
        top = hi.topk(2, dim=1)
        settled = (top.indices[:, 0] == best) & (best_lo > top.values[:, 1])
    else:
        settled = torch.ones_like(best_lo, dtype=torch.bool)
    evaluate = (hi >= best_lo[:, None]) & ~settled[:, None]  # the candidates of mixed tiles
    threshold_area = None
    if mask_threshold is not None:
        full = lo >= mask_threshold
        evaluate |= ~full & (hi >= mask_threshold)
        threshold_area = ((full & ~evaluate) * pixels[:, None]).sum(0)
    winner = torch.where(settled, best, -1)
    tile, query = evaluate.nonzero().unbind(1)  # sorted by tile, then query
    mixed_tiles, mixed_labels = [], []
    for part in _chunks_by_tile(tile, max(1, max_chunk_pixels // grid.pair_pixels)):
        t, q = tile[part], query[part]
        mid = mid_values(q, t)
        lo2, hi2 = _widen(mid.amin((1, 2)), mid.amax((1, 2)))
        if scores is not None:
            lo2, hi2 = _widen(lo2 * scores[q], hi2 * scores[q])
        won, still_mixed = _settle_pairs(t, lo2, hi2, ~settled[t])
        winner[t[won]] = q[won]
        candidate = still_mixed & (hi2 >= _segment_max(t, lo2)[t])
        wanted = candidate
        if threshold_area is not None:
            wanted = candidate | ((lo2 < mask_threshold) & (hi2 >= mask_threshold))
            full_tile = (lo2 >= mask_threshold) & ~wanted
            threshold_area.index_add_(0, q, full_tile * pixels[t])
        t, q, candidate = t[wanted], q[wanted], candidate[wanted]
        vals = grid.target_values(mid[wanted], scores, q, t)
        if threshold_area is not None:
            hit = vals >= mask_threshold
            if grid.padded:
                hit &= grid.valid(t)
            threshold_area.index_add_(0, q, hit.sum((1, 2)))
        if candidate.any():
            tiles, labels = _argmax_by_tile(vals[candidate], q[candidate], t[candidate], num)
            mixed_tiles.append(tiles)
            mixed_labels.append(labels)
    area = torch.zeros(num, dtype=torch.long, device=lo.device)
    whole = winner >= 0
    area.index_add_(0, winner[whole], pixels[whole])
    shape = (0, grid.rows.tile, grid.cols.tile)
    mixed_tiles = torch.cat(mixed_tiles) if mixed_tiles else tile.new_zeros(0)
    mixed_labels = torch.cat(mixed_labels) if mixed_labels else tile.new_zeros(shape)
    if len(mixed_tiles):
        labels = mixed_labels[grid.valid(mixed_tiles)] if grid.padded else mixed_labels.flatten()
        area += torch.bincount(labels, minlength=num)
    return _Resolved(winner, mixed_tiles, mixed_labels, area, threshold_area)


def _segment_max(segment: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Max of `values` per segment id (ids index the result; absent ids get -inf)."""
    size = int(segment.max()) + 1
    return values.new_full((size,), -torch.inf).scatter_reduce(0, segment, values, "amax")


def _settle_pairs(tile: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, active: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Among the active pairs, grouped by tile: the pairs whose bounds win their whole tile,
    and the active pairs of the tiles still not settled."""
    lo = torch.where(active, lo, -torch.inf)
    hi = torch.where(active, hi, -torch.inf)
    best_lo, top_hi = _segment_max(tile, lo)[tile], _segment_max(tile, hi)[tile]
    order = torch.arange(len(tile), device=tile.device)
    size = int(tile.max()) + 1
    first_top = torch.full((size,), len(tile), device=tile.device).scatter_reduce(
        0, tile, torch.where(hi == top_hi, order, len(tile)), "amin")[tile]
    second_hi = _segment_max(tile, torch.where(order == first_top, -torch.inf, hi))[tile]
    won = active & (order == first_top) & (lo == best_lo) & (best_lo > second_hi)
    settled_tile = torch.zeros(size, dtype=torch.bool, device=tile.device)
    settled_tile[tile[won]] = True
    return won, active & ~settled_tile[tile]


def _argmax_by_tile(vals: torch.Tensor, query: torch.Tensor, tile: torch.Tensor, num: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's winning query among the (tile-sorted) pairs of its tile: the tiles and
    their (tiles, tile_h, tile_w) labels."""
    starts = torch.ones_like(tile, dtype=torch.bool)
    starts[1:] = tile[1:] != tile[:-1]
    local = (torch.cumsum(starts, 0) - 1)[:, None].expand(-1, vals[0].numel())
    flat = vals.flatten(1)
    size = (int(starts.sum()), flat.shape[1])
    best = flat.new_full(size, -torch.inf).scatter_reduce(0, local, flat, "amax")
    candidate = torch.where(flat == best.gather(0, local), query[:, None], num)
    labels = query.new_full(size, num).scatter_reduce(0, local, candidate, "amin")
    return tile[starts], labels.view(-1, *vals.shape[1:])


def _render(grid: _Grid, resolved: _Resolved, lut: torch.Tensor) -> torch.Tensor:
    """The (H, W) int32 id map: `lut[query]` per pixel, 0 where no query won."""
    ids = torch.cat([lut.new_zeros(1), lut]).to(torch.int32)
    tiled = ids[resolved.winner + 1][:, None, None]
    tiled = tiled.expand(-1, grid.rows.tile, grid.cols.tile).contiguous()
    if len(resolved.mixed_tiles):
        tiled[resolved.mixed_tiles] = ids[resolved.mixed_labels + 1]
    return grid.untile(tiled)


# ------------------------------------------------------------------------ segments and merging


def _valid_segments(resolved: _Resolved, overlap_mask_area_threshold: float) -> torch.Tensor:
    """transformers' check_segment_validity for every query at once."""
    return _validity(resolved.area, resolved.threshold_area, overlap_mask_area_threshold)


def _validity(area: torch.Tensor, original: torch.Tensor,
              overlap_mask_area_threshold: float) -> torch.Tensor:
    ratio = area / original.clamp_min(1)
    # Compared in float64: transformers compares the float32 ratio's .item() to a Python float.
    return (area > 0) & (original > 0) & (ratio.double() > overlap_mask_area_threshold)


def _segment_ids(valid: torch.Tensor, labels: torch.Tensor, fuse: torch.Tensor) -> torch.Tensor:
    """Ids 1..N in query order; valid queries of a fused label share their first one's id;
    0 for invalid queries."""
    num = len(valid)
    order = torch.arange(num, device=valid.device)
    fused = valid & fuse
    first_of_label = torch.full((int(labels.max()) + 1,), num, device=valid.device)
    first_of_label.scatter_reduce_(0, labels[fused], order[fused], "amin")
    opens = valid & (~fuse | (first_of_label[labels] == order))
    ids = torch.cumsum(opens, 0)
    owner = torch.where(fused, first_of_label[labels].clamp_max(num - 1), order)
    return torch.where(valid, ids[owner], 0)


def _merge(grid: _Grid, source: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
           *, mask_threshold: float, overlap_mask_area_threshold: float,
           fuse_labels: Collection[int], max_chunk_pixels: int) -> SegmentationResult:
    """transformers' compute_segments, vectorized."""
    resolved = _resolve(grid, grid.bounds(source, scores, max_chunk_pixels),
                        partial(grid.mid_values, source), scores, mask_threshold,
                        max_chunk_pixels)
    valid = _valid_segments(resolved, overlap_mask_area_threshold)
    fuse = torch.isin(labels, torch.tensor(sorted(fuse_labels), dtype=labels.dtype,
                                           device=labels.device))
    ids = _segment_ids(valid, labels, fuse)
    return SegmentationResult(_render(grid, resolved, ids), _segment_list(ids, labels, scores, fuse))


def _fits_dense(kept: int, size: tuple[int, int], fam: Family, max_chunk_pixels: int) -> bool:
    """Small enough to resample every kept query whole: cheaper than tiling, same memory cap."""
    mid = fam.mid_size or (0, 0)
    return kept * max(size[0] * size[1], mid[0] * mid[1]) <= max_chunk_pixels


def _merge_dense(source: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                 size: tuple[int, int], fam: Family, *, mask_threshold: float,
                 overlap_mask_area_threshold: float,
                 fuse_labels: Collection[int]) -> SegmentationResult:
    """compute_segments with the whole (kept, H, W) stack at once, for small targets: the
    same operations in the same order as transformers, vectorized over queries."""
    values = source[None]
    if fam.mid_size is not None:
        values = F.interpolate(values, size=fam.mid_size, mode="bilinear",
                               align_corners=False).sigmoid_()
    values = F.interpolate(values, size=size, mode="bilinear", align_corners=False,
                           antialias=fam.antialias)[0]
    values.mul_(scores[:, None, None])
    # max(0) picks the first maximum as argmax(0) does, and is several times faster on the
    # CPU, whose argmax over a leading dimension does not vectorize.
    winner = values.max(0).indices
    area = torch.bincount(winner.flatten(), minlength=len(scores))
    original = (values >= mask_threshold).flatten(1).sum(1)
    valid = _validity(area, original, overlap_mask_area_threshold)
    fuse = torch.isin(labels, torch.tensor(sorted(fuse_labels), dtype=labels.dtype,
                                           device=labels.device))
    ids = _segment_ids(valid, labels, fuse)
    return SegmentationResult(ids.to(torch.int32)[winner], _segment_list(ids, labels, scores, fuse))


def _segment_list(ids: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                  fuse: torch.Tensor) -> list[Segment]:
    segments, seen = [], set()
    for seg_id, label, score, fused in zip(ids.tolist(), labels.tolist(), scores.tolist(),
                                           fuse.tolist(), strict=True):
        if seg_id and seg_id not in seen:
            seen.add(seg_id)
            segments.append(Segment(seg_id, label, round(score, 6), fused))
    return segments


# ------------------------------------------------------------------------------ public entry


def _family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        known = sorted(FAMILIES)
        raise ValueError(f"unknown model family {name!r}; expected one of {known}") from None


def _sizes(target_sizes: Sequence[tuple[int, int]] | None, batch: int,
           default: tuple[int, int]) -> list[tuple[int, int]]:
    if target_sizes is None:
        return [default] * batch
    if len(target_sizes) != batch:
        raise ValueError(f"{len(target_sizes)} target sizes for a batch of {batch}")
    return [(int(h), int(w)) for h, w in target_sizes]


class _GridCache:
    """Tiling plans per (source, target) size within one call."""

    def __init__(self, family: Family, tile: int, device: torch.device, *,
                 mid: bool, between: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.family, self.tile, self.device = family, tile, device
        self.mid, self.between = mid, between
        self.grids: dict[tuple, _Grid] = {}

    def __call__(self, source_size: tuple[int, int], target: tuple[int, int]) -> _Grid:
        key = (source_size, target)
        if key not in self.grids:
            mid = self.family.mid_size if self.mid else None
            self.grids[key] = _make_grid(source_size, mid, target,
                                         antialias=self.family.antialias, tile=self.tile,
                                         between=self.between, device=self.device)
        return self.grids[key]


def _empty(size: tuple[int, int], device: torch.device) -> SegmentationResult:
    return SegmentationResult(torch.zeros(size, dtype=torch.int32, device=device), [])


@torch.no_grad()
def post_process_panoptic(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    target_sizes: Sequence[tuple[int, int]] | None,
    *,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Collection[int] | None = None,
    family: str = "mask2former",
    max_chunk_pixels: int = DEFAULT_MAX_CHUNK_PIXELS,
    tile: int = DEFAULT_TILE,
) -> list[SegmentationResult]:
    """Panoptic segmentation, as ``post_process_panoptic_segmentation``.

    `threshold` defaults to transformers' 0.5 (the original models were evaluated at 0.8).
    `target_sizes=None` keeps the processor's own output size.
    """
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    scores, labels = cls.softmax(-1).max(-1)
    keep = (labels != cls.shape[-1] - 1) & (scores > threshold)
    between = torch.sigmoid if fam.mid_size is not None else None
    grids = _GridCache(fam, tile, masks.device, mid=True, between=between)
    native = fam.mid_size or tuple(masks.shape[-2:])
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(cls), native)):
        kept = keep[i].nonzero().flatten()
        if len(kept) == 0:
            results.append(_empty(size, masks.device))
            continue
        source = masks[i, kept]
        if fam.mid_size is None:
            source = source.sigmoid()
        if _fits_dense(len(kept), size, fam, max_chunk_pixels):
            results.append(_merge_dense(
                source, scores[i, kept], labels[i, kept], size, fam, mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
                fuse_labels=label_ids_to_fuse or ()))
            continue
        results.append(_merge(
            grids(tuple(source.shape[-2:]), size), source, scores[i, kept], labels[i, kept],
            mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold,
            fuse_labels=label_ids_to_fuse or (), max_chunk_pixels=max_chunk_pixels))
    return results


@torch.no_grad()
def post_process_instance(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    target_sizes: Sequence[tuple[int, int]] | None,
    *,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    family: str = "mask2former",
    thing_ids: Collection[int] | None = None,
    max_chunk_pixels: int = DEFAULT_MAX_CHUNK_PIXELS,
    tile: int = DEFAULT_TILE,
) -> list[SegmentationResult]:
    """Instance segmentation, as ``post_process_instance_segmentation`` (ids shifted by +1).

    Mask2Former and MaskFormer ignore `mask_threshold` and `overlap_mask_area_threshold`
    (as transformers does). OneFormer uses them, and `thing_ids` keeps only those labels
    (transformers' ``task_type="panoptic"`` with its metadata's thing ids).
    """
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    native = fam.mid_size or tuple(masks.shape[-2:])
    sizes = _sizes(target_sizes, len(cls), native)
    grids = _GridCache(fam, tile, masks.device, mid=False)
    results = []
    for i, size in enumerate(sizes):
        if fam.instance_by_merge:
            results.append(_instance_by_merge(
                cls[i], masks[i], grids(tuple(masks.shape[-2:]), size), threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold, thing_ids=thing_ids,
                max_chunk_pixels=max_chunk_pixels))
        else:
            grid = grids(tuple(masks.shape[-2:]), native)
            results.append(_instance_by_mask_score(cls[i], masks[i], grid, size, threshold,
                                                   max_chunk_pixels))
    return results


def _top_queries(cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top (query, class) scores as transformers ranks them: score, label, query."""
    num_queries, num_classes = cls.shape[0], cls.shape[1] - 1
    scores, flat = cls.softmax(-1)[:, :-1].flatten().topk(num_queries, sorted=False)
    return scores, flat % num_classes, torch.div(flat, num_classes, rounding_mode="floor")


def _instance_by_merge(cls: torch.Tensor, masks: torch.Tensor, grid: _Grid, *, threshold: float,
                       mask_threshold: float, overlap_mask_area_threshold: float,
                       thing_ids: Collection[int] | None,
                       max_chunk_pixels: int) -> SegmentationResult:
    """OneFormer instances: the top class scores, merged like panoptic segments."""
    scores, labels, queries = _top_queries(cls)
    keep = scores > threshold
    if thing_ids is not None:
        keep &= torch.isin(labels, torch.tensor(sorted(thing_ids), device=labels.device))
    if not keep.any():
        return _empty((grid.rows.size, grid.cols.size), masks.device)
    # OneFormer merges the mask logits themselves, not their probabilities.
    return _merge(grid, masks[queries[keep]], scores[keep], labels[keep],
                  mask_threshold=mask_threshold,
                  overlap_mask_area_threshold=overlap_mask_area_threshold, fuse_labels=(),
                  max_chunk_pixels=max_chunk_pixels)


def _instance_by_mask_score(cls: torch.Tensor, masks: torch.Tensor, grid: _Grid,
                            size: tuple[int, int], threshold: float,
                            max_chunk_pixels: int) -> SegmentationResult:
    """Mask2Former/MaskFormer instances: score = class score x mean probability over the
    mask's positive pixels; binary masks (at the `grid` size) resized by nearest, each later
    instance overwriting earlier ones. Only tiles where a mask may be positive are computed."""
    scores, labels, queries = _top_queries(cls)
    # The mean mask probability is at most 1, so lower class scores can never pass.
    maybe = scores * (1 + 1e-6) >= threshold
    scores, labels, source = scores[maybe], labels[maybe], masks[queries[maybe]]
    if len(scores) == 0:
        return _empty(size, masks.device)
    rows = _nearest_index(grid.rows.size, size[0], masks.device)
    cols = _nearest_index(grid.cols.size, size[1], masks.device)
    sampled = _sampled_pixels(grid, rows, cols)
    _, hi = grid.bounds(source, None, max_chunk_pixels)
    tile, query = (hi > 0).nonzero().unbind(1)
    positive = torch.zeros((len(tile), grid.rows.tile, grid.cols.tile), dtype=torch.bool,
                           device=masks.device)
    prob_sum = torch.zeros(len(scores), device=masks.device)
    max_pairs = max(1, max_chunk_pixels // grid.pair_pixels)
    for part in (slice(a, a + max_pairs) for a in range(0, len(tile), max_pairs)):
        t, q = tile[part], query[part]
        logits = grid.target_values(grid.mid_values(source, q, t), None, q, t)
        positive[part] = (logits > 0) & grid.valid(t)
        prob_sum.index_add_(0, q, (logits.sigmoid() * positive[part]).sum((1, 2)))
    count = torch.zeros_like(prob_sum).index_add_(0, query, positive.sum((1, 2)).float())
    final = scores * (prob_sum / (count + 1e-6))
    seen = torch.zeros(len(scores), dtype=torch.bool, device=masks.device)
    seen[query[(positive & sampled[tile]).flatten(1).any(1)]] = True
    # Compared in float64: transformers compares each score's .item() to a Python float.
    keep = seen & (final.double() >= threshold)
    if not keep.any():
        return _empty(size, masks.device)
    ids = torch.where(keep, torch.cumsum(keep, 0), 0).to(torch.int32)
    owner = torch.zeros((grid.count, grid.rows.tile * grid.cols.tile), dtype=torch.int32,
                        device=masks.device)
    claims = torch.where(positive, ids[query][:, None, None], 0).flatten(1)
    owner.scatter_reduce_(0, tile[:, None].expand_as(claims), claims, "amax")
    id_map = grid.untile(owner.view(-1, grid.rows.tile, grid.cols.tile))[rows][:, cols]
    segments = [Segment(int(seg_id), label, round(score, 6))
                for seg_id, label, score in zip(ids[keep].tolist(), labels[keep].tolist(),
                                                final[keep].tolist(), strict=True)]
    return SegmentationResult(id_map, segments)


def _sampled_pixels(grid: _Grid, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(tiles, tile_h, tile_w) mask of the grid pixels that nearest resizing reads."""
    row_hit = torch.zeros(grid.rows.size, dtype=torch.bool, device=rows.device)
    col_hit = torch.zeros(grid.cols.size, dtype=torch.bool, device=cols.device)
    row_hit[rows], col_hit[cols] = True, True
    every = torch.arange(grid.count, device=rows.device)
    ty, tx = grid.split(every)
    return (row_hit[grid.rows.position][ty][:, :, None]
            & col_hit[grid.cols.position][tx][:, None]) & grid.valid(every)


@torch.no_grad()
def post_process_semantic(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    target_sizes: Sequence[tuple[int, int]] | None,
    *,
    family: str = "mask2former",
    max_chunk_pixels: int = DEFAULT_MAX_CHUNK_PIXELS,
    tile: int = DEFAULT_TILE,
) -> list[SegmentationResult]:
    """Semantic segmentation, as ``post_process_semantic_segmentation``: one segment per
    present class, ids 1..N ascending by class, label_id = class index, score None."""
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    native = fam.mid_size or tuple(masks.shape[-2:])
    between = torch.sigmoid if fam.mid_size is not None else None
    grids = _GridCache(fam, tile, masks.device, mid=True, between=between)
    class_probs = cls.softmax(-1)[..., :-1]
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(cls), native)):
        logits = masks[i]
        grid = grids(tuple(logits.shape[-2:]), size)
        # Class scores are sums of query probabilities with weights >= 0, so the queries'
        # bounds (cheap, from the logits) bound them; sums round, hence the wider slack.
        if fam.mid_size is not None:  # the grid applies the sigmoid after the mid resize
            probs = F.interpolate(logits[None], size=fam.mid_size, mode="bilinear",
                                  align_corners=False)[0].sigmoid()
            bounded = logits
        else:
            probs = bounded = logits.sigmoid()
        query_lo, query_hi = grid.bounds(bounded, None, max_chunk_pixels)
        bounds = _widen(query_lo @ class_probs[i], query_hi @ class_probs[i], slack=1e-4)
        per_class = torch.einsum("qc,qhw->chw", class_probs[i], probs)
        resolved = _resolve(grid, bounds, partial(grid.mid_windows, per_class), None, None,
                            max_chunk_pixels)
        present = resolved.area > 0
        lut = torch.where(present, torch.cumsum(present, 0), 0)
        classes = present.nonzero().flatten().tolist()
        segments = [Segment(n + 1, c, None) for n, c in enumerate(classes)]
        results.append(SegmentationResult(_render(grid, resolved, lut), segments))
    return results
