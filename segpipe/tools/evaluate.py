"""`segpipe eval`: panoptic quality (PQ, SQ, RQ) as the COCO panoptic evaluation defines it.

This follows panopticapi's `pq_compute`, pixel for pixel:

- a prediction and a ground-truth segment match when they have the same category and
  IoU > 0.5; the prediction's pixels on void (GT id 0) leave the union;
- unmatched non-crowd GT segments are FN; an unmatched prediction is a FP unless more
  than half of it lies on void or on a crowd region of its own category;
- PQ, SQ and RQ are averaged over the categories that have any TP, FP or FN.

Where this differs, it does so on purpose: areas come from the PNGs for the GT as well as
the predictions (the JSON's areas are not trusted); GT segments whose category is not in
the GT's category list are void; a GT image without a prediction counts its segments as
FN (panopticapi stops with an error) and the number of such images is reported.
Prediction and GT images are paired by the basename of images[].file_name, because
predictions name their images by full source URI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segpipe.formats import coco
from segpipe.io.storage import Folder, read_url

VOID = 0
OFFSET = 256 * 256 * 256  # larger than any id an RGB PNG can hold
MATCH_IOU = 0.5
IGNORE_FRACTION = 0.5


@dataclass
class CategoryStat:
    """Summed IoU of the matches and the TP / FP / FN counts of one category."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: CategoryStat) -> None:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn


@dataclass
class PQStat:
    per_category: dict[int, CategoryStat] = field(default_factory=dict)

    def __getitem__(self, category_id: int) -> CategoryStat:
        return self.per_category.setdefault(category_id, CategoryStat())

    def add(self, other: PQStat) -> None:
        for category_id, stat in other.per_category.items():
            self[category_id].add(stat)


@dataclass(frozen=True)
class PanopticSet:
    """A COCO-panoptic document, read, and its PNGs: `read_png(file_name)` gives one PNG's
    bytes, `png_url(file_name)` names it in errors."""

    document: dict[str, Any]
    read_png: Callable[[str], bytes]
    png_url: Callable[[str], str]

    @classmethod
    def at(cls, json_url: str, png_dir: str, storage_options: dict | None = None) -> PanopticSet:
        """The document at `json_url`, its PNGs under the folder URL `png_dir`."""
        def url(name: str) -> str:
            return f"{png_dir.rstrip('/')}/{name}"

        return cls(json.loads(read_url(json_url, storage_options)),
                   lambda name: read_url(url(name), storage_options), url)

    @classmethod
    def in_folder(cls, document: dict[str, Any], folder: Folder, png_dir: str) -> PanopticSet:
        """A document already read, its PNGs under the key `png_dir` of `folder`."""
        return cls(document, lambda name: folder.read_bytes(f"{png_dir}/{name}"),
                   lambda name: folder.url_of(f"{png_dir}/{name}"))

    def id_map(self, file_name: str) -> np.ndarray:
        """Segment ids of one of its PNGs."""
        return coco.png_to_id_map(self.read_png(file_name))


def _annotations_by_name(document: dict[str, Any], full_names: bool = False
                         ) -> dict[str, dict[str, Any]]:
    """Each annotation keyed by the basename of its image's file_name (or the whole name)."""
    names = {image["id"]: image["file_name"] if full_names else
             image["file_name"].rsplit("/", 1)[-1] for image in document["images"]}
    by_name = {names[ann["image_id"]]: ann for ann in document["annotations"]}
    if len(by_name) != len(document["annotations"]):
        raise ValueError("two images share a file name: images are paired by file name")
    return by_name


def ground_truth(
    ids: np.ndarray, segments_info: Iterable[dict[str, Any]],
    categories: dict[int, dict[str, Any]],
) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """GT ids and segments with areas from the PNG; unknown categories become void."""
    segments = {}
    for info in segments_info:
        if info["category_id"] in categories:
            segments[info["id"]] = dict(info, area=0, iscrowd=info.get("iscrowd", 0))
        else:
            ids = np.where(ids == info["id"], VOID, ids)
    labels, counts = np.unique(ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if label in segments:
            segments[label]["area"] = count
    return ids, segments


def predictions(
    ids: np.ndarray, segments_info: Iterable[dict[str, Any]],
    categories: dict[int, dict[str, Any]], where: str,
) -> dict[int, dict[str, Any]]:
    """Predicted segments with areas from the PNG; PNG and JSON must agree, as in panopticapi."""
    segments = {info["id"]: dict(info) for info in segments_info}
    unseen = set(segments)
    labels, counts = np.unique(ids, return_counts=True)
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if label == VOID:
            continue
        if label not in segments:
            raise ValueError(f"{where}: segment {label} is in the PNG but not in the JSON")
        segments[label]["area"] = count
        unseen.discard(label)
        if segments[label]["category_id"] not in categories:
            raise ValueError(
                f"{where}: segment {label} has unknown category_id {segments[label]['category_id']}"
            )
    if unseen:
        raise ValueError(f"{where}: segments {sorted(unseen)} are in the JSON but not in the PNG")
    return segments


def pq_single_image(
    gt_ids: np.ndarray,
    gt_segments: dict[int, dict[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: dict[int, dict[str, Any]],
) -> PQStat:
    """TP, FP, FN and matched IoU per category for one image (panopticapi's rules)."""
    stat = PQStat()
    joint = gt_ids.astype(np.uint64) * OFFSET + pred_ids.astype(np.uint64)
    labels, counts = np.unique(joint, return_counts=True)
    overlap = {
        (int(label // OFFSET), int(label % OFFSET)): int(count)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True)
    }
    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), intersection in overlap.items():
        gt, pred = gt_segments.get(gt_label), pred_segments.get(pred_label)
        if gt is None or pred is None or gt["iscrowd"] == 1:
            continue
        if gt["category_id"] != pred["category_id"]:
            continue
        void = overlap.get((VOID, pred_label), 0)
        iou = intersection / (pred["area"] + gt["area"] - intersection - void)
        if iou > MATCH_IOU:
            stat[gt["category_id"]].tp += 1
            stat[gt["category_id"]].iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_by_category: dict[int, list[int]] = {}
    for gt_label, gt in gt_segments.items():
        if gt_label in gt_matched:
            continue
        if gt["iscrowd"] == 1:
            crowd_by_category.setdefault(gt["category_id"], []).append(gt_label)
        else:
            stat[gt["category_id"]].fn += 1

    for pred_label, pred in pred_segments.items():
        if pred_label in pred_matched:
            continue
        # COCO has at most one crowd region per category and image; summing over all of
        # them gives panopticapi's number there and stays sensible elsewhere.
        ignored = overlap.get((VOID, pred_label), 0) + sum(
            overlap.get((crowd, pred_label), 0)
            for crowd in crowd_by_category.get(pred["category_id"], [])
        )
        if ignored / pred["area"] > IGNORE_FRACTION:
            continue
        stat[pred["category_id"]].fp += 1
    return stat


def _missed(annotation: dict[str, Any], categories: dict[int, dict[str, Any]]) -> PQStat:
    """A GT image with no prediction: every non-crowd segment is a FN."""
    stat = PQStat()
    for info in annotation["segments_info"]:
        if info["category_id"] in categories and not info.get("iscrowd", 0):
            stat[info["category_id"]].fn += 1
    return stat


def _average(stat: PQStat, categories: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Mean PQ, SQ, RQ over the categories that occur (panopticapi's pq_average)."""
    scored = [_category_scores(stat[c["id"]]) for c in categories]
    rows = [row for row in scored if row is not None]
    n = len(rows)
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    return {key: sum(row[key] for row in rows) / n for key in ("pq", "sq", "rq")} | {"n": n}


def _category_scores(stat: CategoryStat) -> dict[str, float] | None:
    denominator = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
    if denominator == 0:
        return None
    return {
        "pq": stat.iou / denominator,
        "sq": stat.iou / stat.tp if stat.tp else 0.0,
        "rq": stat.tp / denominator,
    }


def evaluate(
    pred_json: str,
    pred_png_dir: str,
    gt_json: str,
    gt_png_dir: str,
    storage_options: dict | None = None,
    *,
    full_names: bool = False,
) -> dict[str, Any]:
    """PQ / SQ / RQ of a COCO-panoptic prediction against COCO-panoptic ground truth.

    Images are paired by the basename of their file_name, or by the whole file_name with
    `full_names` (the review report pairs DST with its reviews, both named by source URI).

    Returns {"All", "Things", "Stuff": {pq, sq, rq, n}, "per_category": [...],
    "images": {ground_truth, evaluated, missing, extra}}; scores are fractions in [0, 1].
    """
    return evaluate_sets(PanopticSet.at(pred_json, pred_png_dir, storage_options),
                         PanopticSet.at(gt_json, gt_png_dir, storage_options),
                         full_names=full_names)


def evaluate_sets(pred: PanopticSet, gt: PanopticSet, *, full_names: bool = False
                  ) -> dict[str, Any]:
    """`evaluate` of documents already read, each PNG read by its set's `read_png`."""
    categories = {c["id"]: c for c in gt.document["categories"]}
    gt_by_name = _annotations_by_name(gt.document, full_names)
    pred_by_name = _annotations_by_name(pred.document, full_names)

    def one_image(name: str) -> PQStat:
        gt_ann = gt_by_name[name]
        pred_ann = pred_by_name.get(name)
        if pred_ann is None:
            return _missed(gt_ann, categories)
        gt_ids, gt_segments = ground_truth(gt.id_map(gt_ann["file_name"]),
                                           gt_ann["segments_info"], categories)
        pred_ids = pred.id_map(pred_ann["file_name"])
        pred_url = pred.png_url(pred_ann["file_name"])
        if pred_ids.shape != gt_ids.shape:
            raise ValueError(f"{pred_url}: size {pred_ids.shape} differs from GT {gt_ids.shape}")
        pred_segments = predictions(pred_ids, pred_ann["segments_info"], categories, pred_url)
        return pq_single_image(gt_ids, gt_segments, pred_ids, pred_segments)

    total = PQStat()
    # Reading the PNGs dominates; threads overlap the object-store round trips.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for stat in pool.map(one_image, sorted(gt_by_name)):
            total.add(stat)
    return _result(total, list(categories.values()), gt_by_name, pred_by_name)


def _result(
    total: PQStat,
    categories: list[dict[str, Any]],
    gt_by_name: dict[str, Any],
    pred_by_name: dict[str, Any],
) -> dict[str, Any]:
    per_category = []
    for c in categories:
        stat = total[c["id"]]
        scores = _category_scores(stat) or {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        per_category.append(
            {"id": c["id"], "name": c.get("name", str(c["id"])), "isthing": int(c["isthing"]),
             **scores, "tp": stat.tp, "fp": stat.fp, "fn": stat.fn}
        )
    missing = sum(1 for name in gt_by_name if name not in pred_by_name)
    return {
        "All": _average(total, categories),
        "Things": _average(total, [c for c in categories if c["isthing"] == 1]),
        "Stuff": _average(total, [c for c in categories if c["isthing"] != 1]),
        "per_category": per_category,
        "images": {
            "ground_truth": len(gt_by_name),
            "evaluated": len(gt_by_name) - missing,
            "missing": missing,
            "extra": sum(1 for name in pred_by_name if name not in gt_by_name),
        },
    }


def scores(total: PQStat, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """All / Things / Stuff PQ, SQ, RQ and per-category scores of summed per-image stats."""
    result = _result(total, categories, {}, {})
    del result["images"]
    return result


def format_report(result: dict[str, Any]) -> str:
    """The result as text tables, scores x100 as the COCO tools print them."""
    lines = [f"{'':<10}|{'PQ':>7}{'SQ':>7}{'RQ':>7}{'N':>5}", "-" * 37]
    for group in ("All", "Things", "Stuff"):
        row = result[group]
        lines.append(
            f"{group:<10}|{100 * row['pq']:7.1f}{100 * row['sq']:7.1f}{100 * row['rq']:7.1f}"
            f"{row['n']:5d}"
        )
    lines += ["", f"{'category':<20}{'kind':<7}|{'PQ':>7}{'SQ':>7}{'RQ':>7}"
              f"{'TP':>7}{'FP':>7}{'FN':>7}", "-" * 70]
    for c in result["per_category"]:
        kind = "thing" if c["isthing"] else "stuff"
        lines.append(
            f"{c['name'][:19]:<20}{kind:<7}|{100 * c['pq']:7.1f}{100 * c['sq']:7.1f}"
            f"{100 * c['rq']:7.1f}{c['tp']:7d}{c['fp']:7d}{c['fn']:7d}"
        )
    images = result["images"]
    lines += ["", f"images: {images['evaluated']} of {images['ground_truth']} evaluated, "
              f"{images['missing']} without a prediction (their segments count as FN), "
              f"{images['extra']} predictions without ground truth"]
    return "\n".join(lines)
