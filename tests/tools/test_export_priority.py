"""`segpipe export --order priority --limit N`: the images that most need a reviewer, in every
format, through the one selection exports share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segpipe.cli import main
from segpipe.formats.exports import EXPORT_FORMATS
from segpipe.io.storage import Folder, filesystem
from segpipe.tools.export import run_export
from tests.support.destinations import annotated
from tests.support.outputs import read_table


@pytest.fixture(scope="module")
def panoptic_dst(tmp_path_factory, tiny_model, ray_cluster) -> Path:
    return annotated(tmp_path_factory, tiny_model, "panoptic")


def by_priority(dst: Path) -> list[int]:
    """Image ids, highest review priority first, ties in committed order."""
    rows = [r for r in read_table(Folder(str(dst)), "images") if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["run_id"], r["shard_id"]))  # committed order, rows kept stable
    ranked = sorted(enumerate(rows), key=lambda x: (-x[1]["review_priority"], x[0]))
    return [r["image_id"] for _, r in ranked]


def exported_doc(path: Path, format: str):  # noqa: ANN201 - the format's JSON document
    if format == "coco-panoptic":  # a dataset folder in the standard layout
        path = path / "annotations" / "panoptic_default.json"
    return json.loads(path.read_text())


def exported_ids(path: Path, format: str) -> list[int]:
    doc = exported_doc(path, format)
    if format == "labelstudio":
        return [int(task["data"]["segpipe_image_id"]) for task in doc]
    if format == "coco-results":  # detections only: ids in first-seen order
        return list(dict.fromkeys(r["image_id"] for r in doc))
    return [image["id"] for image in doc["images"]]


def test_every_image_has_a_priority_and_they_differ(panoptic_dst):
    rows = read_table(Folder(str(panoptic_dst)), "images")
    values = [r["review_priority"] for r in rows if r["status"] == "ok"]
    assert values and all(0 <= v <= 1 for v in values)
    assert len(set(values)) > 1  # a ranking, not a constant


@pytest.mark.parametrize("format", EXPORT_FORMATS)
def test_order_priority_with_a_limit_exports_the_top_images_in_order(panoptic_dst, tmp_path,
                                                                     format):
    out = tmp_path / "out.json"
    counts = run_export(str(panoptic_dst), format=format, out=str(out), order="priority", limit=3)
    top = by_priority(panoptic_dst)[:3]
    if format == "coco-results":  # a list of detections: images without a thing have none
        ids = exported_ids(out, format)
        assert ids and set(ids) <= set(top) and ids == [i for i in top if i in ids]
        return
    assert counts["images"] == 3
    assert exported_ids(out, format) == top
    if format != "labelstudio":  # annotations only of the exported images
        doc = exported_doc(out, format)
        assert {a["image_id"] for a in doc["annotations"]} <= set(top)


def test_labelstudio_prediction_scores_are_the_priorities(panoptic_dst, tmp_path):
    out = tmp_path / "tasks.json"
    run_export(str(panoptic_dst), format="labelstudio", out=str(out), order="priority")
    priority = {r["image_id"]: r["review_priority"]
                for r in read_table(Folder(str(panoptic_dst)), "images")}
    tasks = json.loads(out.read_text())
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert len(tasks) == len(by_priority(panoptic_dst))
    assert scores == sorted(scores, reverse=True)
    for task, score in zip(tasks, scores, strict=True):
        assert score == pytest.approx(priority[int(task["data"]["segpipe_image_id"])], abs=1e-6)


def test_a_limit_alone_keeps_the_committed_order(panoptic_dst, tmp_path):
    whole, first = tmp_path / "all.json", tmp_path / "first.json"
    run_export(str(panoptic_dst), format="cvat", out=str(whole))
    run_export(str(panoptic_dst), format="cvat", out=str(first), limit=2)
    assert exported_ids(first, "cvat") == exported_ids(whole, "cvat")[:2]


@pytest.mark.parametrize(("options", "message"), [
    ({"order": "random"}, "--order must be one of committed, priority"),
    ({"limit": 0}, "--limit must be at least 1"),
])
def test_bad_selections_are_refused_before_anything_is_written(panoptic_dst, tmp_path, options,
                                                               message):
    with pytest.raises(ValueError, match=message):
        run_export(str(panoptic_dst), format="labelstudio", out=str(tmp_path / "t.json"),
                   **options)
    assert not list(tmp_path.iterdir())


def test_priority_export_from_s3_and_the_command(panoptic_dst, bucket, tmp_path, capsys):
    fs, _ = filesystem(f"s3://{bucket}")
    fs.put(str(panoptic_dst), f"{bucket}/prelabels", recursive=True)
    remote = f"s3://{bucket}/exports/tasks.json"
    assert main(["export", f"s3://{bucket}/prelabels", "--format", "labelstudio", "--out", remote,
                 "--order", "priority", "--limit", "2"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    tasks = json.loads(fs.cat_file(remote))
    assert [int(t["data"]["segpipe_image_id"]) for t in tasks] == by_priority(panoptic_dst)[:2]
