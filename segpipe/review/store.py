"""Writing an import under DST: reviewed PNGs, the reviews table, then reviewed/panoptic.json.

Everything is validated and encoded in memory before the first write, so bad input writes
nothing. The writes then go in an order that makes `reviewed/panoptic.json` the commit: PNGs
(keyed by import, so no PNG the current JSON points at changes), the import's reviews file,
and last the merged JSON that lists the import. Readers only trust imports the JSON lists, so
an interrupted import is as if it never ran, and running it again completes it.

The import id is a digest of what the import writes (less its time), so importing the same
export again finds its id already listed and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from segpipe.destination import layout
from segpipe.destination.reviews import committed_imports
from segpipe.formats import tables
from segpipe.io.storage import Folder, ParallelWrites
from segpipe.labels import Category
from segpipe.review.outcomes import SegmentOutcome
from segpipe.review.reviewed import ReviewedImage


@dataclass(frozen=True)
class PreparedImage:
    """One reviewed image, resolved and matched, ready to write."""

    review: ReviewedImage
    png: bytes
    segments_info: list[dict[str, Any]]
    outcomes: list[SegmentOutcome]


def import_id(source: str, images: list[PreparedImage], categories: list[Category]) -> str:
    digest = hashlib.sha256(source.encode())
    for image in images:
        digest.update(json.dumps([
            image.review.target.image_id, image.review.target.run_id, image.review.item,
            image.review.reviewer_seconds, image.segments_info,
            [list(vars(o).values()) for o in image.outcomes],
            hashlib.sha256(image.png).hexdigest()], sort_keys=True).encode())
    digest.update(json.dumps([c.to_coco() for c in categories], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def write_import(dst: Folder, document: dict[str, Any] | None, *, source: str, input_name: str,
                 images: list[PreparedImage], categories: list[Category]) -> tuple[str, bool]:
    """Write the import; returns (import id, whether anything was written)."""
    the_id = import_id(source, images, categories)
    if any(record["import_id"] == the_id for record in committed_imports(document)):
        return the_id, False
    imported_at = datetime.now(UTC).replace(microsecond=0)
    with ParallelWrites(dst, threads=8) as writes:
        for image in images:
            name = layout.reviewed_png_name(the_id, image.review.target.image_id)
            writes.put(f"{layout.REVIEWED_PNG_DIR}/{name}", image.png)
        writes.wait()
    rows = [_row(the_id, source, imported_at, image, o) for image in images for o in image.outcomes]
    dst.write_bytes(layout.reviews_file(the_id), tables.to_parquet_bytes("reviews", rows))
    merged = _merged(document, the_id, images, categories, {
        "import_id": the_id, "source": source, "input": input_name,
        "imported_at": imported_at.isoformat(),
        "image_ids": [image.review.target.image_id for image in images]})
    dst.write_bytes(layout.REVIEWED_PANOPTIC, json.dumps(merged, indent=1).encode())
    return the_id, True


def _row(the_id: str, source: str, imported_at: datetime, image: PreparedImage,
         outcome: SegmentOutcome) -> dict[str, Any]:
    target = image.review.target
    return {"import_id": the_id, "source": source, "imported_at": imported_at,
            "image_id": target.image_id, "image_uri": target.image_uri,
            "review_item": image.review.item, "prelabel_run_id": target.run_id,
            "reviewer_seconds": image.review.reviewer_seconds, **vars(outcome)}


def _merged(document: dict[str, Any] | None, the_id: str, images: list[PreparedImage],
            categories: list[Category], record: dict[str, Any]) -> dict[str, Any]:
    """The reviewed dataset with this import's images replacing their earlier reviews."""
    document = document or {}
    replaced = {image.review.target.image_id for image in images}
    coco_images = {i["id"]: i for i in document.get("images", []) if i["id"] not in replaced}
    annotations = {a["image_id"]: a for a in document.get("annotations", [])
                   if a["image_id"] not in replaced}
    for image in images:
        target = image.review.target
        coco_images[target.image_id] = {"id": target.image_id, "file_name": target.image_uri,
                                        "width": target.width, "height": target.height}
        annotations[target.image_id] = {
            "image_id": target.image_id, "segpipe_import_id": the_id,
            "segpipe_prelabel_run_id": target.run_id,
            "file_name": layout.reviewed_png_name(the_id, target.image_id),
            "segments_info": image.segments_info}
    info = dict(document.get("info", {"description": "segpipe reviewed labels"}))
    info["segpipe_imports"] = [*committed_imports(document), record]
    return {"info": info, "images": [coco_images[k] for k in sorted(coco_images)],
            "annotations": [annotations[k] for k in sorted(annotations)],
            "categories": [c.to_coco() for c in sorted(categories, key=lambda c: c.id)]}
