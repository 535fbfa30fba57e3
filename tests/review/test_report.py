"""review-report on imported reviews: outcome counts, PQ as panopticapi computes it, the
suggested thresholds and their file."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pytest
from panopticapi.evaluation import pq_compute_single_core

from segpipe.cli import main
from segpipe.destination import layout
from segpipe.io.storage import Folder
from segpipe.review.importing import run_import
from segpipe.review.report import review_report
from segpipe.review.thresholds import FORMAT, suggest_thresholds
from segpipe.tools.evaluate import evaluate
from tests.review.labelstudio_edits import edited_export, write
from tests.support.outputs import printed_json
from tests.support.reviews import upload


def panopticapi_pq(dst) -> float:
    """panopticapi's own PQ of DST's pre-labels against DST/reviewed (paired by image id)."""
    gt = json.loads((dst / layout.REVIEWED_PANOPTIC).read_text())
    pred = json.loads((dst / layout.MERGED_PANOPTIC).read_text())
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_id[a["image_id"]]) for a in gt["annotations"]]
    categories = {c["id"]: c for c in gt["categories"]}
    stat = pq_compute_single_core(0, pairs, str(dst / layout.REVIEWED_PNG_DIR),
                                  str(dst / "panoptic"), categories)
    return stat.pq_average(categories, isthing=None)[0]["pq"]


def test_report_counts_pq_and_thresholds(dst, tmp_path, capsys):
    tasks, edits, _ = edited_export(dst, tmp_path)
    done = run_import(str(dst), "labelstudio", str(write(tmp_path, tasks)))
    report = review_report(str(dst))
    assert report["images_reviewed"] == 2
    assert report["segments"] == done["segments"]
    assert 0 < report["pq"] < 1 and 0 < report["sq"] <= 1 and 0 < report["rq"] < 1
    assert report["pq"] == pytest.approx(panopticapi_pq(dst), abs=1e-12)
    assert report["reviewer_seconds"] == 60.0  # two images, 30 s each
    for outcome in ("accepted", "edited", "relabeled", "deleted", "added"):
        assert sum(c[outcome] for c in report["per_class"]) == report["segments"][outcome]
    relabeled = next(r for r in edits.changed.items() if r[1] == "relabeled")[0]
    before = next(s.category_name for s in edits.image.segments if s.segment_id == relabeled)
    assert next(c for c in report["per_class"] if c["name"] == before)["relabeled"] == 1

    thresholds = tmp_path / "thresholds.json"
    capsys.readouterr()  # panopticapi's progress lines
    assert main(["review-report", str(dst), "--json", "--write-thresholds", str(thresholds)]) == 0
    printed = printed_json(capsys.readouterr().out)
    assert {"images_reviewed", "pq", "sq", "rq", "segments", "per_class",
            "reviewer_seconds"} <= set(printed)
    written = json.loads(thresholds.read_text())
    assert written == {"format": FORMAT, "version": 1, "thresholds": report["thresholds"]}
    assert all(0 <= v <= 1 for v in written["thresholds"].values())
    assert main(["review-report", str(dst)]) == 0
    assert "relab" in capsys.readouterr().out


def test_ground_truth_as_reviews_gives_segpipe_evals_pq(demo_scenes_and_dst, dst, bucket):
    scenes = demo_scenes_and_dst[0]
    run_import(str(dst), "coco-panoptic", str(scenes))
    expected = evaluate(str(dst / "panoptic.json"), str(dst / "panoptic"),
                        str(scenes / "panoptic.json"), str(scenes / "panoptic"))["All"]["pq"]
    assert review_report(str(dst))["pq"] == pytest.approx(expected, abs=1e-12)
    remote = upload(dst, bucket, "dst")
    assert review_report(remote)["pq"] == pytest.approx(expected, abs=1e-12)


@dataclass(frozen=True)
class CountingFolder(Folder):
    """A destination that counts the reads of each key."""

    reads: Counter = field(default_factory=Counter, compare=False)

    def read_bytes(self, key: str) -> bytes:
        self.reads[key] += 1
        return super().read_bytes(key)


def test_the_report_reads_each_file_once_through_the_destination(dst, tmp_path):
    tasks, _, _ = edited_export(dst, tmp_path)
    run_import(str(dst), "labelstudio", str(write(tmp_path, tasks)))
    folder = CountingFolder(str(dst))
    review_report(folder)
    reviewed = json.loads((dst / layout.REVIEWED_PANOPTIC).read_text())
    pngs = [f"{layout.REVIEWED_PNG_DIR}/{a['file_name']}" for a in reviewed["annotations"]]
    assert folder.reads[layout.REVIEWED_PANOPTIC] == 1
    assert folder.reads[layout.MERGED_PANOPTIC] == 1
    assert [folder.reads[key] for key in pngs] == [1] * len(pngs) and pngs


def test_thresholds_are_the_lowest_score_still_mostly_kept():
    def row(name, score, outcome):
        return {"prelabel_segment_id": 1, "score": score, "category_before": name,
                "outcome": outcome}
    rows = [row("dog", 0.9, "accepted"), row("dog", 0.8, "edited"), row("dog", 0.7, "deleted"),
            row("dog", 0.6, "accepted"), row("dog", 0.5, "deleted"), row("dog", 0.4, "deleted"),
            row("cat", 0.9, "deleted"), row("cat", 0.3, "relabeled"),
            {"prelabel_segment_id": None, "score": None, "category_before": None,
             "outcome": "added"}]
    # dog: kept 3 of the 4 scored >= 0.6, 3 of 5 >= 0.5, only 3 of 6 >= 0.4.
    assert suggest_thresholds(rows) == {"cat": 1.0, "dog": 0.5}
