"""The Parquet tables' schemas. They are constants: never inferred from the data.

Each table is a Hive-partitioned Parquet dataset under DST/tables/NAME/run=RUN_ID/,
one file per shard, named by shard id. `pyarrow.dataset.dataset(path, partitioning="hive")`,
DuckDB's `read_parquet('.../**/*.parquet', hive_partitioning=true)` and Polars'
`scan_parquet` read each one whole.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TIMESTAMP = pa.timestamp("us", tz="UTC")

RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])

SEGMENTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("shard_id", pa.string()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("segment_id", pa.int32()),
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("is_thing", pa.bool_()),
        ("score", pa.float32()),
        ("area", pa.int64()),
        ("bbox", pa.list_(pa.int32())),  # COCO [x, y, width, height]
        ("rle", RLE),  # COCO compressed RLE, column-major as pycocotools writes it
        ("image_height", pa.int32()),
        ("image_width", pa.int32()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("task", pa.string()),
        ("created_at", TIMESTAMP),
        ("review_status", pa.string()),  # pending | accepted | rejected | fixed
    ]
)

IMAGES = pa.schema(
    [
        ("run_id", pa.string()),
        ("shard_id", pa.string()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        # Where in the container at image_uri: tar member key, "row=N" (or the --id-column
        # value) of a Parquet table, "line=N" of a manifest entry; null for a plain file.
        ("member", pa.string()),
        ("source_version", pa.string()),  # ETag or size+mtime seen when planned
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("content_hash", pa.string()),  # sha256 of the source bytes
        ("num_segments", pa.int32()),
        ("status", pa.string()),  # ok | error
        ("error", pa.string()),
        ("panoptic_png", pa.string()),  # key relative to DST/
        ("semantic_png", pa.string()),
        ("source_fields", pa.string()),  # JSON of extra source columns
        ("created_at", TIMESTAMP),
        # In [0, 1], higher: review first; null for error rows (model.postprocess.priority).
        ("review_priority", pa.float32()),
    ]
)

ERRORS = pa.schema(
    [
        ("run_id", pa.string()),
        ("shard_id", pa.string()),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        # Where in the container at image_uri: tar member key, "row=N" (or the --id-column
        # value) of a Parquet table, "line=N" of a manifest entry; null for a plain file.
        ("member", pa.string()),
        ("stage", pa.string()),  # read | decode | inference
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("attempt", pa.int32()),
        ("created_at", TIMESTAMP),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"segments": SEGMENTS, "images": IMAGES, "errors": ERRORS}

# One file per incremental run: rows of earlier runs that this run's rows replace (the same
# image, new content). Readers treat (run_id, image_id) pairs listed here as outdated.
SUPERSEDED = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("run_id", pa.string()),  # the run whose rows are superseded
        ("superseded_by_run_id", pa.string()),
        ("created_at", TIMESTAMP),
    ]
)

RUN_SCHEMAS: dict[str, pa.Schema] = {"superseded": SUPERSEDED}

# One file per `segpipe import`: one row per segment outcome of each reviewed image. An
# image's latest import is its review; earlier imports' rows stay as history.
REVIEWS = pa.schema(
    [
        ("import_id", pa.string()),
        ("source", pa.string()),  # labelstudio | cvat | coco-panoptic
        ("imported_at", TIMESTAMP),
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("review_item", pa.string()),  # the task or file name in the review tool's export
        ("prelabel_run_id", pa.string()),  # the run whose pre-labels were reviewed
        ("prelabel_segment_id", pa.int32()),  # null for added segments
        ("reviewed_segment_id", pa.int32()),  # id in DST/reviewed/ PNG; null for deleted ones
        ("category_before", pa.string()),
        ("category_after", pa.string()),
        ("score", pa.float32()),  # the pre-label's score; null for added or unscored segments
        ("iou", pa.float64()),  # pre-label vs reviewed mask; null when unmatched
        ("outcome", pa.string()),  # accepted | edited | relabeled | deleted | added
        ("reviewer_seconds", pa.float64()),  # the image's review time, where the export has it
    ]
)

IMPORT_SCHEMAS: dict[str, pa.Schema] = {"reviews": REVIEWS}


_ALL_SCHEMAS = SCHEMAS | RUN_SCHEMAS | IMPORT_SCHEMAS


def to_parquet_bytes(table: str, rows: list[dict[str, Any]]) -> bytes:
    """Serialize rows with the table's fixed schema; byte-identical for identical rows."""
    arrow = pa.Table.from_pylist(rows, schema=_ALL_SCHEMAS[table])
    buf = io.BytesIO()
    pq.write_table(arrow, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()
