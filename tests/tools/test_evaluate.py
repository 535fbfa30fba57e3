"""Panoptic quality on tiny hand-built cases whose figures are worked out in the comments.

Maps are written as COCO-panoptic PNGs (id = R + 256 G + 256^2 B) with their JSON, as a
prediction folder and a ground-truth folder. Prediction images are named by full URI and
their PNGs by other names than the GT's, as the annotate job writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.demo.synth import write_scenes
from segpipe.tools.evaluate import evaluate, format_report

CATEGORIES = [
    {"id": 1, "name": "disc", "isthing": 1, "color": [255, 0, 0]},
    {"id": 2, "name": "box", "isthing": 1, "color": [0, 255, 0]},
    {"id": 3, "name": "lawn", "isthing": 0, "color": [0, 0, 255]},
]
DISC, BOX, LAWN = 1, 2, 3


def seg(segment_id: int, category_id: int, iscrowd: int = 0) -> dict:
    # Areas and boxes are deliberately wrong: the evaluation must recount them from the PNG.
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd,
            "area": 999, "bbox": [0, 0, 0, 0]}


def write_panoptic(folder: Path, images: dict, *, uri_prefix: str = "", png_prefix: str = "",
                   id_offset: int = 0) -> None:
    """images: name -> (id map, segments_info)."""
    (folder / "panoptic").mkdir(parents=True)
    doc: dict = {"images": [], "annotations": [], "categories": CATEGORIES}
    for k, (name, (ids, segments)) in enumerate(images.items()):
        ids = np.asarray(ids, dtype=np.uint32)
        rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)
        png = f"{png_prefix}{k:04d}.png"
        Image.fromarray(rgb).save(folder / "panoptic" / png)
        image_id = id_offset + k
        doc["images"].append({"id": image_id, "file_name": uri_prefix + name,
                              "height": ids.shape[0], "width": ids.shape[1]})
        doc["annotations"].append({"image_id": image_id, "file_name": png,
                                   "segments_info": segments})
    (folder / "panoptic.json").write_text(json.dumps(doc))


def run(tmp_path: Path, gt: dict, pred: dict) -> dict:
    write_panoptic(tmp_path / "gt", gt)
    write_panoptic(tmp_path / "pred", pred, uri_prefix="s3://b/scenes/images/",
                   png_prefix="pred-", id_offset=100)
    return evaluate(str(tmp_path / "pred" / "panoptic.json"), str(tmp_path / "pred" / "panoptic"),
                    str(tmp_path / "gt" / "panoptic.json"), str(tmp_path / "gt" / "panoptic"))


def scores(result: dict, group: str) -> tuple[float, float, float, int]:
    row = result[group]
    return row["pq"], row["sq"], row["rq"], row["n"]


def category(result: dict, category_id: int) -> dict:
    return next(c for c in result["per_category"] if c["id"] == category_id)


def test_perfect_match_is_one(tmp_path: Path) -> None:
    # Same regions under other segment ids (300 and 70000 need the G and B bytes): every
    # segment is a TP with IoU 1, so PQ = SQ = RQ = 1 everywhere.
    gt_ids = [[1, 1, 2, 2],
              [1, 1, 2, 2]]
    pred_ids = [[300, 300, 70000, 70000],
                [300, 300, 70000, 70000]]
    result = run(tmp_path, {"a.png": (gt_ids, [seg(1, LAWN), seg(2, DISC)])},
                 {"a.png": (pred_ids, [seg(300, LAWN), seg(70000, DISC)])})
    assert scores(result, "All") == (1.0, 1.0, 1.0, 2)
    assert scores(result, "Things") == (1.0, 1.0, 1.0, 1)
    assert scores(result, "Stuff") == (1.0, 1.0, 1.0, 1)
    assert (category(result, DISC)["tp"], category(result, DISC)["fp"]) == (1, 0)
    assert result["images"] == {"ground_truth": 1, "evaluated": 1, "missing": 0, "extra": 0}


def test_wrong_class_is_one_false_positive_and_one_false_negative(tmp_path: Path) -> None:
    # The lawn is exact (TP, IoU 1). The disc is predicted as a box on the same pixels:
    # disc gets a FN, box a FP, no TP for either.
    # disc: PQ = 0 / (0 + 0.5 * 1) = 0; box: likewise 0; lawn: 1.
    # All = (0 + 0 + 1) / 3; Things = 0 over 2 categories; Stuff = 1.
    ids = [[1, 1, 1, 1],
           [1, 1, 1, 1],
           [2, 2, 1, 1],
           [2, 2, 1, 1]]
    result = run(tmp_path, {"a.png": (ids, [seg(1, LAWN), seg(2, DISC)])},
                 {"a.png": (ids, [seg(1, LAWN), seg(2, BOX)])})
    assert (category(result, DISC)["tp"], category(result, DISC)["fn"]) == (0, 1)
    assert (category(result, BOX)["tp"], category(result, BOX)["fp"]) == (0, 1)
    assert result["All"]["pq"] == pytest.approx(1 / 3)
    assert scores(result, "Things") == (0.0, 0.0, 0.0, 2)
    assert scores(result, "Stuff") == (1.0, 1.0, 1.0, 1)


def test_iou_of_exactly_one_half_does_not_match(tmp_path: Path) -> None:
    # GT disc = 2 px. Predicted disc = the whole top row, 4 px, covering those 2:
    # IoU = 2 / (4 + 2 - 2) = 0.5, not > 0.5, so disc has 1 FP and 1 FN.
    # Lawn: GT 6 px, predicted 4 px inside it: IoU = 4 / 6, a TP.
    gt_ids = [[1, 1, 2, 2],
              [2, 2, 2, 2]]
    pred_ids = [[5, 5, 5, 5],
                [6, 6, 6, 6]]
    result = run(tmp_path, {"a.png": (gt_ids, [seg(1, DISC), seg(2, LAWN)])},
                 {"a.png": (pred_ids, [seg(5, DISC), seg(6, LAWN)])})
    disc = category(result, DISC)
    assert (disc["tp"], disc["fp"], disc["fn"], disc["pq"]) == (0, 1, 1, 0.0)
    assert category(result, LAWN)["pq"] == pytest.approx(2 / 3)
    # All = (0 + 2/3) / 2
    assert result["All"]["pq"] == pytest.approx(1 / 3)


def test_iou_just_above_one_half_matches(tmp_path: Path) -> None:
    # Predicted disc = 3 px covering the 2 GT px: IoU = 2 / (3 + 2 - 2) = 2/3, a TP.
    gt_ids = [[1, 1, 2, 2],
              [2, 2, 2, 2]]
    pred_ids = [[5, 5, 5, 6],
                [6, 6, 6, 6]]
    result = run(tmp_path, {"a.png": (gt_ids, [seg(1, DISC), seg(2, LAWN)])},
                 {"a.png": (pred_ids, [seg(5, DISC), seg(6, LAWN)])})
    disc = category(result, DISC)
    assert (disc["tp"], disc["fp"], disc["fn"]) == (1, 0, 0)
    assert disc["sq"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("void_kind", ["id zero", "unknown category"])
def test_void_pixels_leave_the_union(tmp_path: Path, void_kind: str) -> None:
    # The two right pixels of the top row are void in the GT: id 0, or a segment whose
    # category the GT does not list (panopticapi's converters make those void as well).
    # The predicted disc covers them: IoU = 2 / (4 + 2 - 2 - 2 void) = 1, not 2/4 = 0.5.
    void = 0 if void_kind == "id zero" else 9
    gt_ids = [[1, 1, void, void],
              [2, 2, 2, 2]]
    gt_segments = [seg(1, DISC), seg(2, LAWN)] + ([seg(9, 77)] if void else [])
    pred_ids = [[5, 5, 5, 5],
                [6, 6, 6, 6]]
    result = run(tmp_path, {"a.png": (gt_ids, gt_segments)},
                 {"a.png": (pred_ids, [seg(5, DISC), seg(6, LAWN)])})
    assert scores(result, "All") == (1.0, 1.0, 1.0, 2)


def test_prediction_mostly_on_void_is_not_a_false_positive(tmp_path: Path) -> None:
    # Box A: 3 px, all on void: ignored. Box B: 4 px, 2 on void (exactly half, not more
    # than half): a FP. Lawn: exact. So box has fp = 1 and PQ 0; All = (0 + 1) / 2.
    gt_ids = [[0, 0, 0, 0, 0],
              [2, 2, 2, 2, 2]]
    pred_ids = [[5, 5, 5, 7, 7],
                [6, 6, 6, 7, 7]]
    result = run(tmp_path, {"a.png": (gt_ids, [seg(2, LAWN)])},
                 {"a.png": (pred_ids, [seg(5, BOX), seg(6, LAWN), seg(7, BOX)])})
    box = category(result, BOX)
    assert (box["tp"], box["fp"], box["fn"]) == (0, 1, 0)
    # Lawn: GT 5 px, prediction 3 px inside: IoU = 3 / 5.
    assert category(result, LAWN)["pq"] == pytest.approx(3 / 5)
    assert result["All"]["pq"] == pytest.approx((0 + 3 / 5) / 2)


def test_crowd_region_excuses_predictions_of_its_own_category(tmp_path: Path) -> None:
    # The top row is a crowd of discs. A crowd is never matched and never a FN.
    # Pred 5 (disc) lies inside it: not a FP. Pred 7 (box) lies inside it too, but the
    # crowd is of discs: a box FP. Disc has no TP, FP or FN, so it leaves the averages.
    # Things = box's PQ 0 over n = 1; Stuff: lawn exact; All = (0 + 1) / 2.
    gt_ids = [[1, 1, 1, 1],
              [2, 2, 2, 2]]
    pred_ids = [[5, 5, 7, 7],
                [6, 6, 6, 6]]
    result = run(tmp_path, {"a.png": (gt_ids, [seg(1, DISC, iscrowd=1), seg(2, LAWN)])},
                 {"a.png": (pred_ids, [seg(5, DISC), seg(6, LAWN), seg(7, BOX)])})
    disc, box = category(result, DISC), category(result, BOX)
    assert (disc["tp"], disc["fp"], disc["fn"]) == (0, 0, 0)
    assert (box["tp"], box["fp"], box["fn"]) == (0, 1, 0)
    assert scores(result, "Things") == (0.0, 0.0, 0.0, 1)
    assert scores(result, "Stuff") == (1.0, 1.0, 1.0, 1)
    assert result["All"]["pq"] == pytest.approx(0.5)


def test_things_and_stuff_average_separately_and_missing_images_are_fn(tmp_path: Path) -> None:
    # Image a: disc exact (IoU 1); lawn GT 4 px, predicted 3 px (one predicted void):
    # IoU = 3 / (3 + 4 - 3) = 0.75. Image b has no prediction: its box and lawn are FN.
    # disc: PQ 1, SQ 1, RQ 1.   box: tp 0, fn 1: all 0.
    # lawn: tp 1 (0.75), fn 1: PQ = 0.75 / 1.5 = 0.5, SQ = 0.75, RQ = 1 / 1.5.
    # Things (disc, box) = (0.5, 0.5, 0.5); Stuff = (0.5, 0.75, 2/3);
    # All = ((1 + 0 + 0.5) / 3, (1 + 0 + 0.75) / 3, (1 + 0 + 2/3) / 3).
    a_gt = [[1, 1, 1, 1],
            [2, 2, 2, 2]]
    a_pred = [[4, 4, 4, 4],
              [3, 3, 3, 0]]
    b_gt = [[1, 1, 2, 2]]
    result = run(
        tmp_path,
        {"a.png": (a_gt, [seg(1, DISC), seg(2, LAWN)]),
         "b.png": (b_gt, [seg(1, BOX), seg(2, LAWN)])},
        {"a.png": (a_pred, [seg(4, DISC), seg(3, LAWN)])},
    )
    assert scores(result, "Things") == pytest.approx((0.5, 0.5, 0.5, 2))
    assert scores(result, "Stuff") == pytest.approx((0.5, 0.75, 2 / 3, 1))
    assert scores(result, "All") == pytest.approx((1.5 / 3, 1.75 / 3, (5 / 3) / 3, 3))
    lawn = category(result, LAWN)
    assert (lawn["tp"], lawn["fp"], lawn["fn"]) == (1, 0, 1)
    assert result["images"] == {"ground_truth": 2, "evaluated": 1, "missing": 1, "extra": 0}
    report = format_report(result)
    assert "Things" in report and "lawn" in report and "1 without a prediction" in report


def test_prediction_png_and_json_must_agree(tmp_path: Path) -> None:
    ids = [[1, 1, 2, 2]]
    with pytest.raises(ValueError, match="in the PNG but not in the JSON"):
        run(tmp_path, {"a.png": (ids, [seg(1, LAWN), seg(2, DISC)])},
            {"a.png": (ids, [seg(1, LAWN)])})


def test_scenes_scored_against_themselves_on_s3_are_perfect(bucket: str) -> None:
    # Synthetic ground truth through the object store, scored against itself.
    root = f"s3://{bucket}/scenes"
    write_scenes(root, 4, seed=3)
    result = evaluate(f"{root}/panoptic.json", f"{root}/panoptic",
                      f"{root}/panoptic.json", f"{root}/panoptic")
    assert result["All"]["pq"] == 1.0 and result["All"]["n"] >= 3
    assert result["images"]["evaluated"] == 4
