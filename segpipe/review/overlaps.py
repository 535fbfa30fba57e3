"""The one rule for reviewers' overlapping masks, which panoptic labels cannot hold.

Review tools let masks overlap (Label Studio brushes, CVAT masks). Resolved so:

- masks of one stuff category are one segment (panoptic has one segment per stuff class);
- where masks overlap, the later mask in the export wins: it is the one drawn on top, and a
  reviewer's correction is drawn after the mask it corrects;
- a segment left without pixels is dropped; the others are numbered 1..N in export order.

`reassigned_pixels` counts the pixels an earlier mask lost to a later one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from segpipe.labels import Category
from segpipe.review.reviewed import ReviewedMask


@dataclass(frozen=True)
class ResolvedMasks:
    id_map: np.ndarray  # (H, W) uint32, 0 = void
    categories: dict[int, Category]  # segment id -> category
    reassigned_pixels: int


def resolve(masks: Sequence[ReviewedMask], categories: Mapping[str, Category],
            shape: tuple[int, int]) -> ResolvedMasks:
    id_map = np.zeros(shape, dtype=np.uint32)
    segment_of_stuff: dict[str, int] = {}
    category_of: dict[int, Category] = {}
    reassigned = 0
    for mask in masks:
        category = categories[mask.category]
        if not category.isthing and mask.category in segment_of_stuff:
            segment = segment_of_stuff[mask.category]
        else:
            segment = len(category_of) + 1
            category_of[segment] = category
            if not category.isthing:
                segment_of_stuff[mask.category] = segment
        under = id_map[mask.mask]
        reassigned += int(np.count_nonzero((under != 0) & (under != segment)))
        id_map[mask.mask] = segment
    return _renumbered(id_map, category_of, reassigned)


def _renumbered(id_map: np.ndarray, category_of: dict[int, Category],
                reassigned: int) -> ResolvedMasks:
    present = set(np.unique(id_map).tolist()) - {0}
    kept = [segment for segment in sorted(category_of) if segment in present]
    lookup = np.zeros(len(category_of) + 1, dtype=np.uint32)
    for new, old in enumerate(kept, start=1):
        lookup[old] = new
    return ResolvedMasks(lookup[id_map],
                         {new: category_of[old] for new, old in enumerate(kept, start=1)},
                         reassigned)
