"""Per-tile argmax: each target pixel's winning query, settled per tile from bounds where
possible and computed exactly only where still open, with each query's pixel counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from segpipe.model.postprocess.tiling import Grid, chunks_by_tile, widen


@dataclass
class Resolved:
    """Per-pixel argmax over queries, stored per tile, with per-query pixel counts."""

    winner: torch.Tensor  # (tiles,) the query that wins the whole tile, -1 if mixed
    mixed_tiles: torch.Tensor  # (M,) tiles won by several queries
    mixed_labels: torch.Tensor  # (M, tile_h, tile_w) winning query per pixel
    area: torch.Tensor  # (K,) pixels each query wins
    threshold_area: torch.Tensor | None  # (K,) pixels where the value >= mask_threshold


def resolve(grid: Grid, bounds: tuple[torch.Tensor, torch.Tensor],
             mid_values: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             scores: torch.Tensor | None, mask_threshold: float | None,
             max_chunk_pixels: int) -> Resolved:
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
    tile_parts: list[torch.Tensor] = []
    label_parts: list[torch.Tensor] = []
    for part in chunks_by_tile(tile, max(1, max_chunk_pixels // grid.pair_pixels)):
        t, q = tile[part], query[part]
        mid = mid_values(q, t)
        lo2, hi2 = widen(mid.amin((1, 2)), mid.amax((1, 2)))
        if scores is not None:
            lo2, hi2 = widen(lo2 * scores[q], hi2 * scores[q])
        won, still_mixed = _settle_pairs(t, lo2, hi2, ~settled[t])
        winner[t[won]] = q[won]
        candidate = still_mixed & (hi2 >= _segment_max(t, lo2)[t])
        wanted = candidate
        if threshold_area is not None and mask_threshold is not None:
            wanted = candidate | ((lo2 < mask_threshold) & (hi2 >= mask_threshold))
            full_tile = (lo2 >= mask_threshold) & ~wanted
            threshold_area.index_add_(0, q, full_tile * pixels[t])
        t, q, candidate = t[wanted], q[wanted], candidate[wanted]
        vals = grid.target_values(mid[wanted], scores, q, t)
        if threshold_area is not None and mask_threshold is not None:
            hit = vals >= mask_threshold
            if grid.padded:
                hit &= grid.valid(t)
            threshold_area.index_add_(0, q, hit.sum((1, 2)))
        if candidate.any():
            tiles, labels = _argmax_by_tile(vals[candidate], q[candidate], t[candidate], num)
            tile_parts.append(tiles)
            label_parts.append(labels)
    area = torch.zeros(num, dtype=torch.long, device=lo.device)
    whole = winner >= 0
    area.index_add_(0, winner[whole], pixels[whole])
    shape = (0, grid.rows.tile, grid.cols.tile)
    mixed_tiles = torch.cat(tile_parts) if tile_parts else tile.new_zeros(0)
    mixed_labels = torch.cat(label_parts) if label_parts else tile.new_zeros(shape)
    if len(mixed_tiles):
        labels = mixed_labels[grid.valid(mixed_tiles)] if grid.padded else mixed_labels.flatten()
        area += torch.bincount(labels, minlength=num)
    return Resolved(winner, mixed_tiles, mixed_labels, area, threshold_area)


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


def render(grid: Grid, resolved: Resolved, lut: torch.Tensor) -> torch.Tensor:
    """The (H, W) int32 id map: `lut[query]` per pixel, 0 where no query won."""
    ids = torch.cat([lut.new_zeros(1), lut]).to(torch.int32)
    tiled = ids[resolved.winner + 1][:, None, None]
    tiled = tiled.expand(-1, grid.rows.tile, grid.cols.tile).contiguous()
    if len(resolved.mixed_tiles):
        tiled[resolved.mixed_tiles] = ids[resolved.mixed_labels + 1]
    return grid.untile(tiled)
