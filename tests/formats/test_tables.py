"""The Parquet tables read whole, as the README promises: pyarrow.dataset, DuckDB and
Polars, on a local folder and on S3, with the fixed schemas."""

from __future__ import annotations

import os

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from segpipe.destination import layout
from segpipe.destination.reader import RUN_PARTITION, committed_shards, table_dataset
from segpipe.formats.tables import SCHEMAS
from segpipe.io.storage import Folder, filesystem
from tests.support.destinations import annotated, copy_of

pytestmark = pytest.mark.usefixtures("ray_cluster")

# Hive values such as run=00001 look like numbers: every reader is told `run` is a string.
HIVE = ds.partitioning(pa.schema([RUN_PARTITION]), flavor="hive")
DUCKDB_READ = ("read_parquet('{root}/tables/{table}/**/*.parquet', hive_partitioning=true, "
               "hive_types={{'run': VARCHAR}})")


@pytest.fixture(scope="module")
def panoptic_dst(tmp_path_factory, tiny_model, ray_cluster):
    return annotated(tmp_path_factory, tiny_model, "panoptic")


def expected_schema(table: str) -> pa.Schema:
    return SCHEMAS[table].append(RUN_PARTITION)


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # timestamps come back in the session's zone
    return con


def per_category_arrow(segments: pa.Table) -> dict[str, int]:
    counts = segments.group_by("category_name").aggregate([("segment_id", "count")])
    return dict(zip(counts["category_name"].to_pylist(), counts["segment_id_count"].to_pylist(),
                    strict=True))


def per_category_duckdb(con: duckdb.DuckDBPyConnection, root: str) -> dict[str, int]:
    query = (f"SELECT category_name, count(*) AS n FROM {DUCKDB_READ.format(root=root, table='segments')} "
             "GROUP BY category_name")
    return dict(con.sql(query).fetchall())


def per_category_polars(frame: pl.LazyFrame) -> dict[str, int]:
    counts = frame.group_by("category_name").agg(pl.len()).collect()
    return dict(zip(counts["category_name"], counts["len"], strict=True))


def test_tables_read_whole_locally(panoptic_dst):
    root = panoptic_dst.as_posix()
    con = duckdb_connection()
    segments = None
    for table in SCHEMAS:
        path = f"{root}/tables/{table}"
        arrow = ds.dataset(path, format="parquet", partitioning=HIVE).to_table()
        assert arrow.schema.equals(expected_schema(table))
        ours = table_dataset(Folder(root), table).to_table()
        assert ours.schema.equals(expected_schema(table)) and ours.num_rows == arrow.num_rows

        duck = con.sql(f"SELECT * FROM {DUCKDB_READ.format(root=root, table=table)}").arrow()
        duck = duck.read_all() if isinstance(duck, pa.RecordBatchReader) else duck
        assert duck.schema.equals(expected_schema(table)) and duck.num_rows == arrow.num_rows

        frame = pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True,
                                hive_schema={"run": pl.String})
        assert frame.collect_schema() == pl.from_arrow(expected_schema(table).empty_table()).schema
        assert frame.select(pl.len()).collect().item() == arrow.num_rows
        if table == "segments":
            segments = arrow
    assert segments is not None and segments.num_rows > 0
    expected = per_category_arrow(segments)
    assert per_category_duckdb(con, root) == expected
    assert per_category_polars(pl.scan_parquet(
        f"{root}/tables/segments/**/*.parquet", hive_partitioning=True,
        hive_schema={"run": pl.String})) == expected
    assert set(segments["run"].to_pylist()) == {"00001"}


def test_tables_read_whole_on_s3(panoptic_dst, bucket, s3_endpoint):
    """pyarrow and Polars read S3 themselves. DuckDB reads S3 through the same fsspec
    filesystem (`register_filesystem`): its own httpfs extension is a download away."""
    fs, _ = filesystem(f"s3://{bucket}")
    fs.put(str(panoptic_dst / "tables"), f"{bucket}/dst/tables", recursive=True)
    fs.put(str(panoptic_dst / layout.META), f"{bucket}/dst/{layout.META}", recursive=True)
    root = f"s3://{bucket}/dst"
    local = ds.dataset(f"{panoptic_dst}/tables/segments", format="parquet",
                       partitioning=HIVE).to_table()
    expected = per_category_arrow(local)

    arrow = table_dataset(Folder(root), "segments").to_table()
    assert arrow.schema.equals(expected_schema("segments"))
    assert arrow.sort_by("image_id").equals(local.sort_by("image_id"))

    con = duckdb_connection()
    con.register_filesystem(fs)
    assert per_category_duckdb(con, root) == expected

    options = {"aws_endpoint_url": s3_endpoint, "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
               "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
               "aws_region": "us-east-1",
               "aws_allow_http": "true"}
    frame = pl.scan_parquet(f"{root}/tables/segments/**/*.parquet", hive_partitioning=True,
                            hive_schema={"run": pl.String}, storage_options=options)
    assert frame.collect_schema() == pl.from_arrow(expected_schema("segments").empty_table()).schema
    assert per_category_polars(frame) == expected


def test_table_dataset_holds_committed_shards_only(panoptic_dst, tmp_path):
    dst = copy_of(panoptic_dst, tmp_path / "dst")
    folder = Folder(str(dst))
    run_id, dropped = committed_shards(folder)[0]
    folder.delete(layout.commit(run_id, dropped))
    for table in ("segments", "images"):
        everything = ds.dataset(f"{dst}/tables/{table}", format="parquet", partitioning=HIVE)
        committed = table_dataset(folder, table).to_table()
        shards = set(committed["shard_id"].to_pylist())
        assert dropped not in shards
        assert committed.num_rows == everything.to_table(
            filter=ds.field("shard_id") != dropped).num_rows
    # A raw glob still sees the uncommitted shard's files: readers filter by commit marker.
    assert dropped in set(ds.dataset(f"{dst}/tables/images", format="parquet",
                                     partitioning=HIVE).to_table()["shard_id"].to_pylist())
