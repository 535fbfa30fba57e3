"""Merging queries into segments: transformers' ``compute_segments``, vectorized (validity,
fused stuff labels, ids 1..N), tiled or dense for small targets."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from segpipe.core.items import Segment
from segpipe.model.loading import Family
from segpipe.model.postprocess.argmax import Resolved, render, resolve
from segpipe.model.postprocess.tiling import Grid


@dataclass
class SegmentationResult:
    """One image's result: an id map on the model's device and its segments."""

    id_map: torch.Tensor  # (H, W) int32, 0 = void, segment ids 1..N
    segments: list[Segment]


def _valid_segments(resolved: Resolved, overlap_mask_area_threshold: float) -> torch.Tensor:
    """transformers' check_segment_validity for every query at once."""
    assert resolved.threshold_area is not None, "merge resolves with a mask_threshold"
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


def merge(grid: Grid, source: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
           *, mask_threshold: float, overlap_mask_area_threshold: float,
           fuse_labels: Collection[int], max_chunk_pixels: int) -> SegmentationResult:
    """transformers' compute_segments, vectorized."""
    resolved = resolve(grid, grid.bounds(source, scores, max_chunk_pixels),
                        partial(grid.mid_values, source), scores, mask_threshold,
                        max_chunk_pixels)
    valid = _valid_segments(resolved, overlap_mask_area_threshold)
    fuse = torch.isin(labels, torch.tensor(sorted(fuse_labels), dtype=labels.dtype,
                                           device=labels.device))
    ids = _segment_ids(valid, labels, fuse)
    return SegmentationResult(render(grid, resolved, ids), _segment_list(ids, labels, scores, fuse))


# On a CPU, tiling costs a few hundred small ops plus the mixed tiles' pixels, and dense costs
# every kept query at every target pixel: on the demo model's outputs (one thread) dense is
# cheaper up to about 480x360 (19.1-19.7 against 19.1-22.4 ms an image), tiling beyond
# (640x480: 20.5-21.2 against 25.5-28.5 ms). In the worker's own threading (a forward thread
# beside a finishing pool that post-processes and encodes, 2 cores, 10 interleaved rounds)
# tiling at 640x480 took 8% less CPU and 6% less wall time an image, faster in 9 rounds of 10
# (benchmarks/merge_choice.py; an earlier, non-interleaved comparison saw no gain). On a GPU, dense
# is a few large kernels where tiling is hundreds of small ones and several syncs, so it
# stays dense up to the memory cap.
CPU_DENSE_MAX_PAIRS = 1 << 20


def fits_dense(kept: int, size: tuple[int, int], fam: Family, max_chunk_pixels: int, *,
               device: torch.device, max_pairs: int | None = None) -> bool:
    """Whether to resample every kept query whole rather than tile: cheaper up to `max_pairs`
    (kept query, target pixel) pairs (None: the device's own limit), within the memory cap
    that tiling keeps to as well."""
    if max_pairs is None:
        max_pairs = CPU_DENSE_MAX_PAIRS if device.type == "cpu" else max_chunk_pixels
    mid = fam.mid_size or (0, 0)
    pixels = size[0] * size[1]
    return kept * pixels <= max_pairs and kept * max(pixels, mid[0] * mid[1]) <= max_chunk_pixels


def merge_dense(source: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
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
    original = _count_at_least(values, mask_threshold)
    valid = _validity(area, original, overlap_mask_area_threshold)
    fuse = torch.isin(labels, torch.tensor(sorted(fuse_labels), dtype=labels.dtype,
                                           device=labels.device))
    ids = _segment_ids(valid, labels, fuse)
    # index_select: a flat gather, several times faster than indexing by a 2-D index tensor.
    id_map = ids.to(torch.int32).index_select(0, winner.flatten()).view(size)
    return SegmentationResult(id_map, _segment_list(ids, labels, scores, fuse))


def _count_at_least(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """(K,) how many of each query's values are >= threshold. On the CPU by numpy, whose
    count_nonzero runs a third of the time of torch's sum, which widens the bools to int64
    first; both compare in float32 (the threshold is a weak Python float in each)."""
    if values.device.type == "cpu":
        flat = values.numpy().reshape(len(values), -1)
        return torch.from_numpy(np.count_nonzero(flat >= threshold, axis=1))
    return (values >= threshold).flatten(1).sum(1)


def _segment_list(ids: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
                  fuse: torch.Tensor) -> list[Segment]:
    segments, seen = [], set()
    for seg_id, label, score, fused in zip(ids.tolist(), labels.tolist(), scores.tolist(),
                                           fuse.tolist(), strict=True):
        if seg_id and seg_id not in seen:
            seen.add(seg_id)
            segments.append(Segment(seg_id, label, round(score, 6), fused))
    return segments
