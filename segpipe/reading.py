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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from segpipe import coco, layout, tables
from segpipe.decode import decode_image
from segpipe.incremental import is_replaced, replaced_by_later_runs
from segpipe.labels import Category, load_categories
from segpipe.merge import committed_shards as _committed_shards
from segpipe.records import ImageFailure, ImageRef
from segpipe.storage import Folder, filesystem

# Hive partition values look like numbers ("00001"); read as strings they keep their zeros.
RUN_PARTITION = pa.field("run", pa.string())

Shards = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class SegmentRecord:
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
    segments: tuple[SegmentRecord, ...]

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.image_id, self.image_uri, self.member)


def open_destination(dst: str | Folder, storage_options: dict[str, Any] | None = None) -> Folder:
    return dst if isinstance(dst, Folder) else Folder(dst, dict(storage_options or {}))


def committed_shards(dst: Folder) -> list[tuple[str, str]]:
    """(run id, shard id) of every committed shard, in run then shard order."""
    return list(_committed_shards(dst))


class NothingCommitted(ValueError):
    """A destination without a committed shard: a wrong URL, or a job that has not
    committed anything yet."""


def require_committed(dst: Folder) -> list[tuple[str, str]]:
    """The committed shards; raises NothingCommitted when there are none, so that a
    mistyped destination is an error rather than an empty export."""
    shards = committed_shards(dst)
    if not shards:
        raise NothingCommitted(f"{dst.url} has no committed shards: not a segpipe destination, "
                               "or no shard of its job has finished yet")
    return shards


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


def table_files(dst: Folder, table: str, shards: Shards | None = None) -> list[str]:
    """Paths (on `dst.fs`) of one table's files of the committed shards."""
    shards = committed_shards(dst) if shards is None else shards
    return [dst.path(tables.table_key(table, run_id, sid)) for run_id, sid in shards]


def table_dataset(dst: Folder, table: str, shards: Shards | None = None) -> ds.Dataset:
    """One table of the committed shards as a pyarrow dataset: the fixed schema plus the
    Hive `run` partition column (a string). Query it with pyarrow, DuckDB or Polars."""
    schema = tables.SCHEMAS[table].append(RUN_PARTITION)
    partitioning = ds.partitioning(pa.schema([RUN_PARTITION]), flavor="hive")
    return ds.dataset(table_files(dst, table, shards), schema=schema, format="parquet",
                      filesystem=dst.fs, partitioning=partitioning,
                      partition_base_dir=dst.path(f"tables/{table}"))


def iter_images(dst: Folder, *, shards: Shards | None = None, segments: bool = True,
                rle: bool = True, min_score: float | None = None) -> Iterator[AnnotatedImage]:
    """Annotated images of the committed shards, in run, shard and row order.

    `segments=False` reads only the images table. `min_score` drops segments scored
    below it; segments without a score (semantic runs) are kept.
    """
    shards = committed_shards(dst) if shards is None else list(shards)
    replaced = replaced_by_later_runs(dst, shards)
    fs = dst.fs
    for run_id, sid in shards:
        images = pq.read_table(dst.path(tables.table_key("images", run_id, sid)), filesystem=fs)
        rows = [r for r in images.to_pylist()
                if r["status"] == "ok" and not is_replaced(replaced, run_id, r["image_id"])]
        if not rows:
            continue
        by_image: dict[int, list[SegmentRecord]] = defaultdict(list)
        models: dict[int, tuple[str | None, str | None]] = {}
        if segments:
            columns = [name for name in tables.SEGMENTS.names if rle or name != "rle"]
            seg_table = pq.read_table(dst.path(tables.table_key("segments", run_id, sid)),
                                      filesystem=fs, columns=columns)
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
                segments=tuple(by_image.get(row["image_id"], ())))


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


def read_source_pixels(dst: Folder, image: AnnotatedImage, *,
                       storage_options: dict[str, Any] | None = None,
                       max_pixels: int = 89_478_485) -> np.ndarray:
    """The source image as RGB uint8, oriented as the model saw it (EXIF applied), so it
    lines up with the id map. Images inside containers are read with the run's source."""
    ref = image.ref
    if ref.member is None:
        fs, path = filesystem(ref.uri, storage_options)
        data = fs.cat_file(path)
    else:
        from segpipe.sources import open_source

        config = run_config(dst, image.run_id)
        source = open_source(config.get("src") or ref.uri, source_format=config.get("source_format"),
                             storage_options=storage_options,
                             image_column=config.get("image_column"),
                             uri_column=config.get("uri_column"), id_column=config.get("id_column"))
        _, data = next(iter(source.fetch([ref], threads=1)))
        if isinstance(data, ImageFailure):
            raise OSError(data.message)
    decoded = decode_image(ref, data, max_pixels=max_pixels)
    if isinstance(decoded, ImageFailure):
        raise OSError(decoded.message)
    return decoded.pixels


def _segment(row: dict[str, Any]) -> SegmentRecord:
    # Scores are float32 in the table; six digits is what the writer kept.
    score = None if row["score"] is None else round(row["score"], 6)
    return SegmentRecord(row["segment_id"], row["category_id"], row["category_name"],
                         row["is_thing"], score, row["area"], list(row["bbox"]), row.get("rle"))


