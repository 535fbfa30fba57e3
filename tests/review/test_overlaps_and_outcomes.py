from __future__ import annotations

import numpy as np

from segpipe.labels import Category
from segpipe.review.outcomes import ACCEPT_IOU, PreLabel, match_segments
from segpipe.review.overlaps import resolve
from segpipe.review.reviewed import ReviewedMask

CATS = {"dog": Category(1, "dog", True, (1, 1, 1)), "cat": Category(2, "cat", True, (2, 2, 2)),
        "sky": Category(3, "sky", False, (3, 3, 3))}


def box(y0, y1, x0, x1, shape=(10, 10)):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_the_later_mask_wins_and_reassigned_pixels_are_counted():
    first, second = box(0, 4, 0, 4), box(2, 6, 2, 6)
    resolved = resolve([ReviewedMask("dog", first), ReviewedMask("cat", second)], CATS, (10, 10))
    assert resolved.reassigned_pixels == 4
    assert np.array_equal(resolved.id_map == 2, second)
    assert (resolved.id_map == 1).sum() == 12
    assert {k: c.name for k, c in resolved.categories.items()} == {1: "dog", 2: "cat"}


def test_stuff_masks_of_one_class_fuse_and_hidden_segments_go():
    resolved = resolve([ReviewedMask("sky", box(0, 2, 0, 10)), ReviewedMask("dog", box(5, 6, 0, 2)),
                        ReviewedMask("sky", box(8, 10, 0, 10)),
                        ReviewedMask("cat", box(5, 6, 0, 2))], CATS, (10, 10))
    assert {k: c.name for k, c in resolved.categories.items()} == {1: "sky", 2: "cat"}
    assert (resolved.id_map == 1).sum() == 40
    assert resolved.reassigned_pixels == 2


def test_outcomes_follow_the_iou_rules():
    pre = np.zeros((20, 20), np.uint32)
    pre[0:10, 0:10] = 1   # kept as is
    pre[10:20, 0:10] = 2  # cut to 70 %
    pre[0:10, 10:20] = 3  # relabeled
    pre[10:12, 10:12] = 4  # deleted
    rev = np.zeros_like(pre)
    rev[0:10, 0:10] = 1
    rev[13:20, 0:10] = 2
    rev[0:10, 10:20] = 3
    rev[15:20, 15:20] = 4  # added
    outcomes = match_segments(
        pre, {1: PreLabel("dog", 0.9), 2: PreLabel("dog", 0.8), 3: PreLabel("dog", 0.7),
              4: PreLabel("cat", 0.2)},
        rev, {1: "dog", 2: "dog", 3: "cat", 4: "cat"})
    assert [(o.outcome, o.prelabel_segment_id, o.reviewed_segment_id) for o in outcomes] == [
        ("accepted", 1, 1), ("edited", 2, 2), ("relabeled", 3, 3), ("deleted", 4, None),
        ("added", None, 4)]
    assert outcomes[1].iou == 0.7 < ACCEPT_IOU
    assert (outcomes[2].category_before, outcomes[2].category_after) == ("dog", "cat")


def test_half_overlap_is_no_match():
    pre = np.zeros((4, 4), np.uint32)
    pre[:, :2] = 1
    rev = np.zeros_like(pre)
    rev[:, 1:3] = 1  # IoU 1/3
    outcomes = match_segments(pre, {1: PreLabel("dog", None)}, rev, {1: "dog"})
    assert [o.outcome for o in outcomes] == ["deleted", "added"]
