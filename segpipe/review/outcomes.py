"""What the reviewer did to each pre-label segment.

Segments are matched as the COCO panoptic evaluation matches them, by IoU > 0.5 (a match is
then unique), but regardless of category so that a relabeling is seen as one:

- matched, same category, IoU >= ACCEPT_IOU (0.98): `accepted` (kept as it was, up to the
  few pixels a brush round trip or an overlap may move);
- matched, same category, lower IoU: `edited`;
- matched, another category: `relabeled`;
- a pre-label segment without a match: `deleted`; a reviewed one without a match: `added`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.5
ACCEPT_IOU = 0.98
OFFSET = 1 << 32


@dataclass(frozen=True)
class SegmentOutcome:
    outcome: str  # accepted | edited | relabeled | deleted | added
    prelabel_segment_id: int | None
    reviewed_segment_id: int | None
    category_before: str | None
    category_after: str | None
    score: float | None
    iou: float | None


@dataclass(frozen=True)
class PreLabel:
    category: str
    score: float | None


def match_segments(pre_ids: np.ndarray, pre: Mapping[int, PreLabel], reviewed_ids: np.ndarray,
                   reviewed: Mapping[int, str]) -> list[SegmentOutcome]:
    """One outcome per pre-label segment (in id order), then one per added segment."""
    ious = _ious(pre_ids, reviewed_ids)
    match: dict[int, tuple[int, float]] = {}
    for (p, r), iou in ious.items():
        if p in pre and r in reviewed and iou > MATCH_IOU:
            match[p] = (r, iou)
    outcomes = []
    for p in sorted(pre):
        before = pre[p]
        if p not in match:
            outcomes.append(SegmentOutcome("deleted", p, None, before.category, None,
                                           before.score, None))
            continue
        r, iou = match[p]
        after = reviewed[r]
        kind = ("relabeled" if after != before.category
                else "accepted" if iou >= ACCEPT_IOU else "edited")
        outcomes.append(SegmentOutcome(kind, p, r, before.category, after, before.score, iou))
    matched = {r for r, _ in match.values()}
    outcomes += [SegmentOutcome("added", None, r, None, reviewed[r], None, None)
                 for r in sorted(reviewed) if r not in matched]
    return outcomes


def _ious(a: np.ndarray, b: np.ndarray) -> dict[tuple[int, int], float]:
    """IoU of every overlapping (a id, b id) pair of non-void segments."""
    joint = a.astype(np.uint64) * OFFSET + b.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    area_a = dict(zip(*[v.tolist() for v in np.unique(a, return_counts=True)], strict=True))
    area_b = dict(zip(*[v.tolist() for v in np.unique(b, return_counts=True)], strict=True))
    ious = {}
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        i, j = divmod(label, OFFSET)
        if i and j:
            ious[(i, j)] = count / (area_a[i] + area_b[j] - count)
    return ious
