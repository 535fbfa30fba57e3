"""Label Studio round trips: segpipe's tasks, edited as a reviewer would, encoded with
label-studio-sdk, and imported back; bad exports write nothing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from segpipe.destination import layout
from segpipe.destination.reviews import (
    images_with_review_status,
    latest_reviews,
    segments_with_review_status,
)
from segpipe.formats import coco, tables
from segpipe.io.storage import Folder
from segpipe.review.importing import run_import
from segpipe.review.reviewed import ReviewImportError
from tests.review.labelstudio_edits import (
    as_reviewed,
    brush_item,
    edited_export,
    exported_tasks,
    task_of,
    write,
)
from tests.support.reviews import tree_digest, upload


def test_edits_come_back_as_outcomes_reviewed_labels_and_statuses(dst, tmp_path):
    tasks, edits, b = edited_export(dst, tmp_path)
    done = run_import(str(dst), "labelstudio", str(write(tmp_path, tasks)))
    expected = dict(edits.expected)
    expected["accepted"] += len(b.segments)
    assert done["segments"] == expected
    assert (done["images"], done["not_reviewed"]) == (2, 1)
    assert done["reassigned_pixels"] == edits.added_pixels > 0

    folder = Folder(str(dst))
    reviews = ds.dataset(str(dst / "tables/reviews"), format="parquet", partitioning="hive")
    assert reviews.schema.remove(reviews.schema.get_field_index("import")) == tables.REVIEWS
    rows = latest_reviews(folder).to_pylist()
    by_segment = {r["prelabel_segment_id"]: r for r in rows if r["image_id"] == edits.image.image_id}
    for segment_id, outcome in edits.changed.items():
        assert by_segment[segment_id]["outcome"] == outcome
    relabeled = next(r for r in rows if r["outcome"] == "relabeled")
    assert relabeled["category_before"] != relabeled["category_after"]
    assert {r["reviewer_seconds"] for r in rows if r["image_id"] == b.image_id} == {30.0}

    reviewed = json.loads((dst / layout.REVIEWED_PANOPTIC).read_text())
    assert sorted(i["file_name"] for i in reviewed["images"]) == sorted(
        [edits.image.image_uri, b.image_uri])
    ann = next(a for a in reviewed["annotations"] if a["image_id"] == edits.image.image_id)
    ids = coco.png_to_id_map((dst / layout.REVIEWED_PNG_DIR / ann["file_name"]).read_bytes())
    assert sorted(np.unique(ids[ids > 0]).tolist()) == sorted(s["id"] for s in ann["segments_info"])
    assert len(ann["segments_info"]) == len(edits.masks)

    segments = segments_with_review_status(folder).to_pylist()
    status = {(s["image_id"], s["segment_id"]): s["review_status"] for s in segments}
    assert [status[(edits.image.image_id, k)] for k in sorted(edits.changed)] == [
        {"relabeled": "fixed", "edited": "fixed", "deleted": "rejected"}[edits.changed[k]]
        for k in sorted(edits.changed)]
    assert {v for (i, _), v in status.items() if i == b.image_id} == {"accepted"}
    images = {r["image_id"]: r["review_status"] for r in images_with_review_status(folder).to_pylist()}
    assert sorted(images.values()) == ["pending", "reviewed", "reviewed"]


def test_the_same_export_twice_changes_nothing_and_a_newer_one_replaces(dst, tmp_path):
    tasks, edits, _ = edited_export(dst, tmp_path)
    export = write(tmp_path, tasks)
    first = run_import(str(dst), "labelstudio", str(export))
    before = tree_digest(str(dst))
    again = run_import(str(dst), "labelstudio", str(export))
    assert (again["written"], again["import_id"]) == (False, first["import_id"])
    assert tree_digest(str(dst)) == before

    # The reviewer reopens image A and accepts its pre-labels as they were.
    newer = as_reviewed(exported_tasks(dst, tmp_path / "tasks2.json"), when="2026-02-01T00:00:00Z")
    only_a = [task_of(newer, edits.image.image_id)]
    replaced = run_import(str(dst), "labelstudio", str(write(tmp_path, only_a, "newer.json")))
    assert replaced["segments"]["accepted"] == len(edits.image.segments)
    rows = latest_reviews(Folder(str(dst))).to_pylist()
    a_rows = [r for r in rows if r["image_id"] == edits.image.image_id]
    assert {r["outcome"] for r in a_rows} == {"accepted"}
    assert {r["import_id"] for r in a_rows} == {replaced["import_id"]}
    reviewed = json.loads((dst / layout.REVIEWED_PANOPTIC).read_text())
    assert len(reviewed["images"]) == 2  # A's review replaced, B's kept
    assert [i["import_id"] for i in reviewed["info"]["segpipe_imports"]] == [
        first["import_id"], replaced["import_id"]]


def _truncated(tasks, tmp_path):
    text = json.dumps(tasks)
    return text[: len(text) // 2], "not valid JSON"


def _wrong_format(tasks, tmp_path):
    return json.dumps({"images": [], "annotations": [], "categories": []}), "not a Label Studio"


def _unknown_image(tasks, tmp_path):
    tasks[0]["data"]["segpipe_image_id"] = "12345"
    return json.dumps(tasks), "12345.*not in the destination"


def _wrong_size(tasks, tmp_path):
    tasks[1]["annotations"][0]["result"].append(brush_item("sky", np.ones((7, 9), bool), "small"))
    return json.dumps(tasks), f"task {tasks[1]['id']}.*9x7"


def _unknown_category(tasks, tmp_path):
    item = tasks[2]["annotations"][0]["result"][0]
    item["value"]["brushlabels"] = ["zebra"]
    return json.dumps(tasks), f"task {tasks[2]['id']}.*'zebra'.*--add-categories"


@pytest.mark.parametrize("spoil", [_truncated, _wrong_format, _unknown_image, _wrong_size,
                                   _unknown_category])
def test_a_bad_export_is_refused_naming_it_and_writes_nothing(dst, tmp_path, spoil):
    tasks = as_reviewed(exported_tasks(dst, tmp_path / "tasks.json"))
    text, message = spoil(tasks, tmp_path)
    (tmp_path / "bad.json").write_text(text)
    before = tree_digest(str(dst))
    with pytest.raises(ReviewImportError, match=message):
        run_import(str(dst), "labelstudio", str(tmp_path / "bad.json"))
    assert tree_digest(str(dst)) == before


def test_add_categories_accepts_a_new_name(dst, tmp_path):
    tasks = as_reviewed(exported_tasks(dst, tmp_path / "tasks.json"))
    tasks[0]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["zebra"]
    done = run_import(str(dst), "labelstudio", str(write(tmp_path, tasks)), add_categories=True)
    assert done["added_categories"] == ["zebra"]
    reviewed = json.loads((dst / layout.REVIEWED_PANOPTIC).read_text())
    zebra = next(c for c in reviewed["categories"] if c["name"] == "zebra")
    assert zebra["id"] > max(c["id"] for c in reviewed["categories"] if c["name"] != "zebra")
    assert any(s["category_id"] == zebra["id"] for a in reviewed["annotations"]
               for s in a["segments_info"])


def test_import_into_and_from_s3(dst, tmp_path, bucket):
    tasks, edits, b = edited_export(dst, tmp_path)
    remote_dst = upload(dst, bucket, "prelabels")
    export = upload(write(tmp_path, tasks), bucket, "exports/project.json")
    done = run_import(remote_dst, "labelstudio", export)
    local = run_import(str(dst), "labelstudio", str(tmp_path / "export.json"))
    assert done["segments"] == local["segments"]
    assert done["import_id"] == local["import_id"]  # the same content, the same id
    remote = Folder(remote_dst)
    assert json.loads(remote.read_bytes(layout.REVIEWED_PANOPTIC)) == json.loads(
        (dst / layout.REVIEWED_PANOPTIC).read_text()) | {
        "info": json.loads(remote.read_bytes(layout.REVIEWED_PANOPTIC))["info"]}
    statuses = [s["review_status"] for s in segments_with_review_status(remote).to_pylist()]
    assert statuses.count("rejected") == 1 and statuses.count("fixed") == 2
    assert run_import(remote_dst, "labelstudio", export)["written"] is False


def test_import_command(dst, tmp_path, capsys):
    from segpipe.cli import main

    tasks, _, _ = edited_export(dst, tmp_path)
    export = write(tmp_path, tasks)
    assert main(["import", str(dst), "--from", "labelstudio", str(export)]) == 0
    out = capsys.readouterr().out
    assert "imported 2 reviewed images" in out and "deleted 1" in out
    assert main(["import", str(dst), "--from", "labelstudio", str(export)]) == 0
    assert "already imported" in capsys.readouterr().out
    (tmp_path / "cut.json").write_text(export.read_text()[:100])
    assert main(["import", str(dst), "--from", "labelstudio", str(tmp_path / "cut.json")]) == 1
    assert "cut.json: not valid JSON" in capsys.readouterr().err
