"""The tiling grid: the target cut into tiles, each with the source and mid windows under it,
bounds of every query over every tile, and exact values of (query, tile) pairs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from segpipe.model.postprocess.taps import antialiased_taps, bilinear_taps

# Ties and rounding: bounds are widened by this relative amount (float32 resampling and
# sigmoid errors are a few ulps, ~1e-7); anything closer is evaluated exactly.
BOUND_SLACK = 1e-5
DEFAULT_MAX_CHUNK_PIXELS = 1 << 22
DEFAULT_TILE = 16


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
    final = (antialiased_taps if antialias else bilinear_taps)(mid or src, out, device)
    out_index = final.index[position]
    lo, hi = out_index.amin((1, 2)), out_index.amax((1, 2))
    out_index = out_index - lo[:, None, None]
    mid_index = mid_weight = None
    n_mid = int((hi - lo).max()) + 1
    mid_window = torch.minimum(lo[:, None] + torch.arange(n_mid, device=device), hi[:, None])
    if mid is not None:
        first = bilinear_taps(src, mid, device)
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
    out: torch.Tensor | None = None
    for t in range(index.shape[-1]):
        picked = rows.index_select(0, (base + index[:, :, t]).flatten())
        picked, w = picked.view(n, index.shape[1], b), weight[:, :, t, None]
        out = picked * w if out is None else torch.addcmul(out, picked, w)
    assert out is not None, "a tap table has at least one tap per position"
    return out


def _resample_cols(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                   ) -> torch.Tensor:
    """Resample (N, A, B) along B; rows are cheaper to pick than columns, so transpose."""
    picked = _resample_rows(values.transpose(1, 2).contiguous(), index, weight)
    return picked.transpose(1, 2).contiguous()


@dataclass(frozen=True)
class Grid:
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
            assert self.cols.mid_index is not None, "make_grid gives both axes a mid step or neither"
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
        lo, hi = widen(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        if self.between is not None and self.rows.mid_index is not None:
            lo, hi = widen(self.between(lo), self.between(hi))
        if scores is not None:
            lo, hi = widen(lo * scores, hi * scores)
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
        assert rows.mid_weight is not None and cols.mid_index is not None \
            and cols.mid_weight is not None, "make_grid gives both axes a mid step or neither"
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


def widen(lo: torch.Tensor, hi: torch.Tensor,
           slack: float = BOUND_SLACK) -> tuple[torch.Tensor, torch.Tensor]:
    margin = slack * torch.maximum(lo.abs(), hi.abs()) + 1e-30
    return lo - margin, hi + margin


def make_grid(source_size: tuple[int, int], mid_size: tuple[int, int] | None,
               target: tuple[int, int], *, antialias: bool, tile: int,
               between: Callable[[torch.Tensor], torch.Tensor] | None,
               device: torch.device) -> Grid:
    mid_h, mid_w = mid_size if mid_size is not None else (None, None)
    rows = _plan_axis(source_size[0], mid_h, target[0], tile, antialias, device)
    cols = _plan_axis(source_size[1], mid_w, target[1], tile, antialias, device)
    return Grid(rows, cols, between)


def chunks_by_tile(tile: torch.Tensor, max_pairs: int) -> list[slice]:
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
