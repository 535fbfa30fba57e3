"""Read the reviews that `segpipe import` brought back, and join them onto the tables.

Review status is not a column of the images table, and the segments table's `review_status`
stays `pending` in its files: committed shard files are never rewritten (an object store has
no in-place update). The status lives in the reviews table instead, and readers join it here.

An import is committed when `reviewed/panoptic.json` lists it (`info.segpipe_imports`, in
import order); that file is written last, so rows of an interrupted import are never read.
Each image's review is its latest committed import.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from segpipe.destination import layout
from segpipe.destination.committed import Shards, table_dataset
from segpipe.destination.reader import read_table
from segpipe.formats import tables
from segpipe.io.storage import Folder

# The segments table's review_status vocabulary, from the reviews' outcomes.
SEGMENT_STATUS = {"accepted": "accepted", "edited": "fixed", "relabeled": "fixed",
                  "deleted": "rejected"}
PENDING = "pending"
REVIEWED = "reviewed"


def reviewed_document(dst: Folder) -> dict[str, Any] | None:
    """The merged COCO-panoptic document of the reviewed labels; None before any import."""
    if not dst.exists(layout.REVIEWED_PANOPTIC):
        return None
    return dst.read_json(layout.REVIEWED_PANOPTIC)


def committed_imports(document: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The imports that the reviewed document holds, oldest first."""
    return list((document or {}).get("info", {}).get("segpipe_imports", []))


def latest_reviews(dst: Folder, document: dict[str, Any] | None = None) -> pa.Table:
    """Rows of the reviews table from each image's latest committed import."""
    document = reviewed_document(dst) if document is None else document
    latest: dict[int, str] = {}
    for record in committed_imports(document):
        for image_id in record["image_ids"]:
            latest[int(image_id)] = record["import_id"]
    parts = []
    for import_id in dict.fromkeys(latest.values()):
        table = read_table(dst, layout.reviews_file(import_id), schema=tables.REVIEWS)
        keep = [latest.get(i) == import_id for i in table.column("image_id").to_pylist()]
        parts.append(table.filter(pa.array(keep, pa.bool_())))
    return pa.concat_tables(parts) if parts else tables.REVIEWS.empty_table()


def segment_review_status(reviews: pa.Table) -> dict[tuple[str, int, int], str]:
    """(pre-label run id, image id, segment id) -> review status of the pre-label segment."""
    status = {}
    for row in reviews.select(["prelabel_run_id", "image_id", "prelabel_segment_id",
                               "outcome"]).to_pylist():
        if row["prelabel_segment_id"] is not None:
            key = (row["prelabel_run_id"], row["image_id"], row["prelabel_segment_id"])
            status[key] = SEGMENT_STATUS[row["outcome"]]
    return status


def segments_with_review_status(dst: Folder, shards: Shards | None = None) -> pa.Table:
    """The committed segments table with `review_status` filled from the latest reviews
    (`pending` where no review covers the segment; a review of an earlier run's pre-labels
    does not cover a later run's segments)."""
    segments = table_dataset(dst, "segments", shards).to_table()
    status = segment_review_status(latest_reviews(dst))
    filled = [status.get((r, i, s), PENDING) for r, i, s in zip(
        segments.column("run_id").to_pylist(), segments.column("image_id").to_pylist(),
        segments.column("segment_id").to_pylist(), strict=True)]
    index = segments.schema.get_field_index("review_status")
    return segments.set_column(index, "review_status", pa.array(filled, pa.string()))


def images_with_review_status(dst: Folder, shards: Shards | None = None) -> pa.Table:
    """The committed images table plus `review_status` (`reviewed` | `pending`) and
    `review_import_id` (the import that holds the image's review, or null). A review is of
    the run whose pre-labels it corrected: a later run's rows of the image are pending."""
    images = table_dataset(dst, "images", shards).to_table()
    document = reviewed_document(dst) or {}
    reviewed = {(a.get("segpipe_prelabel_run_id"), a["image_id"]): a.get("segpipe_import_id")
                for a in document.get("annotations", [])}
    imports = [reviewed.get((run, image)) for run, image in zip(
        images.column("run_id").to_pylist(), images.column("image_id").to_pylist(), strict=True)]
    images = images.append_column("review_status", pa.array(
        [PENDING if i is None else REVIEWED for i in imports], pa.string()))
    return images.append_column("review_import_id", pa.array(imports, pa.string()))
