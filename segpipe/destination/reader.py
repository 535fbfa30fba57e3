"""Read what a destination holds: its committed shards, tables and masks.

Export, preview and other readers go through here, so they all see the same thing:
only shards with a commit marker count, and an image annotated in several runs is
read from the latest run that annotated it (a later run only re-annotates an image
whose content changed), as in the merged panoptic.json. Reading is per shard, so memory
follows one shard, not the destination.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from segpipe.core.items import ImageRef
from segpipe.destination import layout
from segpipe.destination.committed import (
    RUN_PARTITION,
    NothingCommitted,
    Shards,
    committed_shards,
    require_committed,
    table_dataset,
    table_files,
)
from segpipe.destination.incremental import is_superseded, superseded_by_later_runs
from segpipe.formats import coco, tables
from segpipe.io.storage import Folder
from segpipe.labels import Category, load_categories


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One row of the segments table, the columns a reader needs."""

    segment_id: int
    category_id: int
    category_name: str
    is_thing: bool
    score: float | None
    area: int
    bbox: list[int]
    rle: dict[str, Any] | None  # COCO compressed RLE {size, counts}; None when not read


@dataclass(frozen=True, slots=True)
class AnnotatedImage:
    """One annotated image of a committed shard, with its segments."""

    image_id: int
    image_uri: str
    member: str | None
    width: int
    height: int
    run_id: str
    shard_id: str
    panoptic_png: str
    semantic_png: str | None
    model: str | None
    model_revision: str | None
    segments: tuple[SegmentRow, ...]
    review_priority: float | None = None  # null in destinations written before it existed

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.image_id, self.image_uri, self.member)


__all__ = [
    "RUN_PARTITION", "AnnotatedImage", "NothingCommitted", "SegmentRow", "Shards", "categories",
    "committed_shards", "iter_images", "job_settings", "open_destination", "read_id_map",
    "read_semantic", "read_table", "require_committed", "run_config", "table_dataset",
    "table_files",
]


def open_destination(dst: str | Folder, storage_options: dict[str, Any] | None = None) -> Folder:
    return dst if isinstance(dst, Folder) else Folder(dst, dict(storage_options or {}))


def job_settings(dst: Folder) -> dict[str, Any]:
    """The settings that guard the destination (model, task, label map...)."""
    return dst.read_json(layout.JOB)["fingerprint"] if dst.exists(layout.JOB) else {}


def run_config(dst: Folder, run_id: str) -> dict[str, Any]:
    """The job config a run was started with (storage option values are not stored)."""
    return dst.read_json(layout.run_record(run_id)).get("config", {})


def categories(dst: Folder, shards: Shards | None = None) -> tuple[Category, ...]:
    """The destination's categories (every shard of a destination has the same ones)."""
    shards = committed_shards(dst) if shards is None else shards
    if not shards:
        return ()
    return load_categories(dst.read_json(layout.fragment(*shards[0]))["categories"])


def iter_images(dst: Folder, *, shards: Shards | None = None, segments: bool = True,
                rle: bool = True, min_score: float | None = None) -> Iterator[AnnotatedImage]:
    """Annotated images of the committed shards, in run, shard and row order.

    `segments=False` reads only the images table. `min_score` drops segments scored
    below it; segments without a score (semantic runs) are kept.
    """
    shards = committed_shards(dst) if shards is None else list(shards)
    superseded = superseded_by_later_runs(dst, shards)
    for run_id, sid in shards:
        images = read_table(dst, layout.table_file("images", run_id, sid))
        rows = [r for r in images.to_pylist()
                if r["status"] == "ok" and not is_superseded(superseded, run_id, r["image_id"])]
        if not rows:
            continue
        by_image: dict[int, list[SegmentRow]] = defaultdict(list)
        models: dict[int, tuple[str | None, str | None]] = {}
        if segments:
            columns = [name for name in tables.SEGMENTS.names if rle or name != "rle"]
            seg_table = read_table(dst, layout.table_file("segments", run_id, sid), columns)
            for row in seg_table.to_pylist():
                models[row["image_id"]] = (row["model"], row["model_revision"])
                seg = _segment(row)
                if min_score is None or seg.score is None or seg.score >= min_score:
                    by_image[row["image_id"]].append(seg)
        for row in rows:
            model, revision = models.get(row["image_id"], (None, None))
            yield AnnotatedImage(
                image_id=row["image_id"], image_uri=row["image_uri"], member=row["member"],
                width=row["width"], height=row["height"], run_id=run_id, shard_id=sid,
                panoptic_png=row["panoptic_png"], semantic_png=row["semantic_png"],
                model=model, model_revision=revision,
                segments=tuple(by_image.get(row["image_id"], ())),
                review_priority=row.get("review_priority"))


def read_id_map(dst: Folder, image: AnnotatedImage) -> np.ndarray:
    """The panoptic id map (H, W): segment id per pixel, 0 = void."""
    return coco.png_to_id_map(dst.read_bytes(image.panoptic_png))


def read_semantic(dst: Folder, image: AnnotatedImage) -> tuple[np.ndarray, int]:
    """The semantic label map (H, W) of a semantic run and its void value (255 for 8-bit
    PNGs, 65535 for 16-bit ones)."""
    if not image.semantic_png:
        raise ValueError(f"{image.image_uri} has no semantic PNG (not a semantic run)")
    with Image.open(io.BytesIO(dst.read_bytes(image.semantic_png))) as png:
        void = 255 if png.mode in ("L", "P") else 65535
        return np.asarray(png).astype(np.int64), void


def read_table(dst: Folder, key: str, columns: list[str] | None = None, *,
               schema: pa.Schema | None = None) -> pa.Table:
    """One Parquet file of `dst` (a shard's, an import's), read whole: it is small, and one
    read through storage has its retries."""
    return pq.read_table(io.BytesIO(dst.read_bytes(key)), columns=columns, schema=schema)


def _segment(row: dict[str, Any]) -> SegmentRow:
    # Scores are float32 in the table; six digits is what the writer kept.
    score = None if row["score"] is None else round(row["score"], 6)
    return SegmentRow(row["segment_id"], row["category_id"], row["category_name"],
                         row["is_thing"], score, row["area"], list(row["bbox"]), row.get("rle"))


