"""The public post-processing functions, one per task: panoptic, instance and semantic."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from segpipe.core.config import TASK_THRESHOLDS, default_of
from segpipe.core.items import Segment
from segpipe.model.loading import FAMILIES, Family
from segpipe.model.postprocess.argmax import render, resolve
from segpipe.model.postprocess.merging import SegmentationResult, fits_dense, merge, merge_dense
from segpipe.model.postprocess.taps import nearest_index
from segpipe.model.postprocess.thresholds import drop_below_class_thresholds, threshold_of
from segpipe.model.postprocess.tiling import (
    DEFAULT_MAX_CHUNK_PIXELS,
    DEFAULT_TILE,
    Grid,
    make_grid,
    widen,
)


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


def _spatial_size(values: torch.Tensor) -> tuple[int, int]:
    """(height, width) of a tensor whose last two dimensions are spatial."""
    return values.shape[-2], values.shape[-1]


class _GridCache:
    """Tiling plans per (source, target) size within one call."""

    def __init__(self, family: Family, tile: int, device: torch.device, *,
                 mid: bool, between: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.family, self.tile, self.device = family, tile, device
        self.mid, self.between = mid, between
        self.grids: dict[tuple, Grid] = {}

    def __call__(self, source_size: tuple[int, int], target: tuple[int, int]) -> Grid:
        key = (source_size, target)
        if key not in self.grids:
            mid = self.family.mid_size if self.mid else None
            self.grids[key] = make_grid(source_size, mid, target,
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
    threshold: float = TASK_THRESHOLDS["panoptic"],
    mask_threshold: float = default_of("mask_threshold"),
    overlap_mask_area_threshold: float = default_of("overlap_mask_area_threshold"),
    label_ids_to_fuse: Collection[int] | None = None,
    family: str = "mask2former",
    max_chunk_pixels: int = DEFAULT_MAX_CHUNK_PIXELS,
    tile: int = DEFAULT_TILE,
    class_thresholds: Mapping[int, float] | None = None,
    dense_max_pairs: int | None = None,
) -> list[SegmentationResult]:
    """Panoptic segmentation, as ``post_process_panoptic_segmentation``.

    `threshold` defaults to transformers' 0.5 (the original models were evaluated at 0.8).
    `target_sizes=None` keeps the processor's own output size. `class_thresholds` (model
    label -> score) replaces `threshold` for the labels it lists. `dense_max_pairs` moves the
    choice between the dense and the tiled merge (see `fits_dense`); the result is the same.
    """
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    scores, labels = cls.softmax(-1).max(-1)
    keep = (labels != cls.shape[-1] - 1) & (scores > threshold_of(labels, threshold,
                                                                   class_thresholds))
    between = torch.sigmoid if fam.mid_size is not None else None
    grids = _GridCache(fam, tile, masks.device, mid=True, between=between)
    native = fam.mid_size or _spatial_size(masks)
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(cls), native)):
        kept = keep[i].nonzero().flatten()
        if len(kept) == 0:
            results.append(_empty(size, masks.device))
            continue
        source = masks[i, kept]
        if fam.mid_size is None:
            source = source.sigmoid()
        if fits_dense(len(kept), size, fam, max_chunk_pixels, device=masks.device,
                      max_pairs=dense_max_pairs):
            results.append(merge_dense(
                source, scores[i, kept], labels[i, kept], size, fam, mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
                fuse_labels=label_ids_to_fuse or ()))
            continue
        results.append(merge(
            grids(_spatial_size(source), size), source, scores[i, kept], labels[i, kept],
            mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold,
            fuse_labels=label_ids_to_fuse or (), max_chunk_pixels=max_chunk_pixels))
    return results


@torch.no_grad()
def post_process_instance(
    class_queries_logits: torch.Tensor,
    masks_queries_logits: torch.Tensor,
    target_sizes: Sequence[tuple[int, int]] | None,
    *,
    threshold: float = TASK_THRESHOLDS["instance"],
    mask_threshold: float = default_of("mask_threshold"),
    overlap_mask_area_threshold: float = default_of("overlap_mask_area_threshold"),
    family: str = "mask2former",
    thing_ids: Collection[int] | None = None,
    max_chunk_pixels: int = DEFAULT_MAX_CHUNK_PIXELS,
    tile: int = DEFAULT_TILE,
    class_thresholds: Mapping[int, float] | None = None,
) -> list[SegmentationResult]:
    """Instance segmentation, as ``post_process_instance_segmentation`` (ids shifted by +1).

    Mask2Former and MaskFormer ignore `mask_threshold` and `overlap_mask_area_threshold`
    (as transformers does). OneFormer uses them, and `thing_ids` keeps only those labels
    (transformers' ``task_type="panoptic"`` with its metadata's thing ids).
    `class_thresholds` (model label -> score) replaces `threshold` for the labels it lists.
    """
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    native = fam.mid_size or _spatial_size(masks)
    sizes = _sizes(target_sizes, len(cls), native)
    grids = _GridCache(fam, tile, masks.device, mid=False)
    results = []
    for i, size in enumerate(sizes):
        if fam.instance_by_merge:
            results.append(_instance_by_merge(
                cls[i], masks[i], grids(_spatial_size(masks), size), threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold, thing_ids=thing_ids,
                max_chunk_pixels=max_chunk_pixels, class_thresholds=class_thresholds))
        else:
            grid = grids(_spatial_size(masks), native)
            results.append(_instance_by_mask_score(cls[i], masks[i], grid, size, threshold,
                                                   max_chunk_pixels, class_thresholds))
    return results


def _top_queries(cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top (query, class) scores as transformers ranks them: score, label, query."""
    num_queries, num_classes = cls.shape[0], cls.shape[1] - 1
    scores, flat = cls.softmax(-1)[:, :-1].flatten().topk(num_queries, sorted=False)
    return scores, flat % num_classes, torch.div(flat, num_classes, rounding_mode="floor")


def _instance_by_merge(cls: torch.Tensor, masks: torch.Tensor, grid: Grid, *, threshold: float,
                       mask_threshold: float, overlap_mask_area_threshold: float,
                       thing_ids: Collection[int] | None, max_chunk_pixels: int,
                       class_thresholds: Mapping[int, float] | None) -> SegmentationResult:
    """OneFormer instances: the top class scores, merged like panoptic segments."""
    scores, labels, queries = _top_queries(cls)
    keep = scores > threshold_of(labels, threshold, class_thresholds)
    if thing_ids is not None:
        keep &= torch.isin(labels, torch.tensor(sorted(thing_ids), device=labels.device))
    if not keep.any():
        return _empty((grid.rows.size, grid.cols.size), masks.device)
    # OneFormer merges the mask logits themselves, not their probabilities.
    return merge(grid, masks[queries[keep]], scores[keep], labels[keep],
                  mask_threshold=mask_threshold,
                  overlap_mask_area_threshold=overlap_mask_area_threshold, fuse_labels=(),
                  max_chunk_pixels=max_chunk_pixels)


def _instance_by_mask_score(cls: torch.Tensor, masks: torch.Tensor, grid: Grid,
                            size: tuple[int, int], threshold: float, max_chunk_pixels: int,
                            class_thresholds: Mapping[int, float] | None) -> SegmentationResult:
    """Mask2Former/MaskFormer instances: score = class score x mean probability over the
    mask's positive pixels; binary masks (at the `grid` size) resized by nearest, each later
    instance overwriting earlier ones. Only tiles where a mask may be positive are computed."""
    scores, labels, queries = _top_queries(cls)
    # The mean mask probability is at most 1, so lower class scores can never pass.
    minimum = threshold_of(labels, threshold, class_thresholds, dtype=torch.float64)
    maybe = scores * (1 + 1e-6) >= minimum
    if isinstance(minimum, torch.Tensor):
        minimum = minimum[maybe]
    scores, labels, source = scores[maybe], labels[maybe], masks[queries[maybe]]
    if len(scores) == 0:
        return _empty(size, masks.device)
    rows = nearest_index(grid.rows.size, size[0], masks.device)
    cols = nearest_index(grid.cols.size, size[1], masks.device)
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
    keep = seen & (final.double() >= minimum)
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


def _sampled_pixels(grid: Grid, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
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
    class_thresholds: Mapping[int, float] | None = None,
) -> list[SegmentationResult]:
    """Semantic segmentation, as ``post_process_semantic_segmentation``: one segment per
    present class, ids 1..N ascending by class, label_id = class index, score None.
    `class_thresholds` (model label -> score): a query adds to a listed class only where its
    probability of that class passes the threshold."""
    fam = _family(family)
    cls = class_queries_logits.float()
    masks = masks_queries_logits.float()
    native = fam.mid_size or _spatial_size(masks)
    between = torch.sigmoid if fam.mid_size is not None else None
    grids = _GridCache(fam, tile, masks.device, mid=True, between=between)
    class_probs = drop_below_class_thresholds(cls.softmax(-1)[..., :-1], class_thresholds)
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(cls), native)):
        logits = masks[i]
        grid = grids(_spatial_size(logits), size)
        # Class scores are sums of query probabilities with weights >= 0, so the queries'
        # bounds (cheap, from the logits) bound them; sums round, hence the wider slack.
        if fam.mid_size is not None:  # the grid applies the sigmoid after the mid resize
            probs = F.interpolate(logits[None], size=fam.mid_size, mode="bilinear",
                                  align_corners=False)[0].sigmoid()
            bounded = logits
        else:
            probs = bounded = logits.sigmoid()
        query_lo, query_hi = grid.bounds(bounded, None, max_chunk_pixels)
        bounds = widen(query_lo @ class_probs[i], query_hi @ class_probs[i], slack=1e-4)
        per_class = torch.einsum("qc,qhw->chw", class_probs[i], probs)
        resolved = resolve(grid, bounds, partial(grid.mid_windows, per_class), None, None,
                            max_chunk_pixels)
        present = resolved.area > 0
        lut = torch.where(present, torch.cumsum(present, 0), 0)
        classes = present.nonzero().flatten().tolist()
        segments = [Segment(n + 1, c, None) for n, c in enumerate(classes)]
        results.append(SegmentationResult(render(grid, resolved, lut), segments))
    return results
