"""Per-class score thresholds in post-processing: one mechanism for every task."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from segpipe.model.postprocess import (
    SegmentationResult,
    post_process_instance,
    post_process_panoptic,
    post_process_semantic,
)
from tests.model.test_postprocess import make_outputs

SIZES = [(40, 52)]


def label_map(result: SegmentationResult) -> np.ndarray:
    """Each pixel's label (-1 for void)."""
    ids = result.id_map.numpy()
    lut = np.full(int(ids.max()) + 1, -1)
    for seg in result.segments:
        lut[seg.segment_id] = seg.label_id
    return lut[ids]


def run(task: str, family: str, cls, masks, **kwargs) -> SegmentationResult:
    if task == "panoptic":
        return post_process_panoptic(cls, masks, SIZES, family=family, **kwargs)[0]
    if task == "instance":
        return post_process_instance(cls, masks, SIZES, family=family, **kwargs)[0]
    return post_process_semantic(cls, masks, SIZES, family=family, **kwargs)[0]


@pytest.mark.parametrize(("task", "family"), [
    ("panoptic", "mask2former"), ("panoptic", "oneformer"), ("instance", "mask2former"),
    ("instance", "oneformer"), ("semantic", "mask2former")])
def test_a_high_threshold_for_one_class_removes_its_segments_and_nothing_else(task, family):
    cls, masks = make_outputs(1, queries=30, classes=6, kept=12, seed=3)
    before = run(task, family, cls, masks)
    counts = Counter(seg.label_id for seg in before.segments)
    gone = counts.most_common(1)[0][0]
    after = run(task, family, cls, masks, class_thresholds={gone: 1.0})

    assert gone in counts and gone not in {seg.label_id for seg in after.segments}
    others = Counter((s.label_id, s.score) for s in before.segments if s.label_id != gone)
    assert Counter((s.label_id, s.score) for s in after.segments) == others
    old, new = label_map(before), label_map(after)
    assert (old == gone).any() and not (new == gone).any()
    assert np.array_equal(old[old != gone], new[old != gone])


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_thresholds_equal_to_the_default_change_nothing(task):
    cls, masks = make_outputs(2, queries=30, classes=6, kept=12, seed=4)
    plain = post_process_panoptic if task == "panoptic" else post_process_instance
    a = plain(cls, masks, SIZES * 2, threshold=0.5)
    b = plain(cls, masks, SIZES * 2, threshold=0.5, class_thresholds=dict.fromkeys(range(6), 0.5))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.id_map, y.id_map) and x.segments == y.segments


def test_a_low_threshold_for_one_class_keeps_more_of_it():
    cls, masks = make_outputs(1, queries=30, classes=6, kept=12, seed=5)
    probs = cls.softmax(-1)[0]
    scores, labels = probs.max(-1)
    # A query whose top class is real but scored below the global threshold.
    weak = ((labels != 6) & (scores < 0.9) & (scores > 0.2)).nonzero().flatten()
    assert len(weak) > 0
    label = int(labels[weak[0]])
    strict = post_process_panoptic(cls, masks, SIZES, threshold=0.9)[0]
    lenient = post_process_panoptic(cls, masks, SIZES, threshold=0.9,
                                    class_thresholds={label: 0.1})[0]
    count = lambda r: sum(s.label_id == label for s in r.segments)  # noqa: E731
    assert count(lenient) > count(strict)
