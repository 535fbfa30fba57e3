"""Which shards of a destination are committed, and their tables as datasets.

The lowest layer of reading a destination: everything that reads one (merge, incremental
runs, the reader, status, the tools) learns what is committed here, from commit markers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # imported where a table is read: it costs the annotate driver a second
    import pyarrow.dataset as ds

from segpipe.core.errors import SegpipeError
from segpipe.destination import layout
from segpipe.formats import tables
from segpipe.io.storage import Folder

# Hive partition values look like numbers ("00001"); read as strings they keep their zeros.
RUN_PARTITION = pa.field("run", pa.string())

Shards = Sequence[tuple[str, str]]


class NothingCommitted(SegpipeError, ValueError):
    """A destination without a committed shard: a wrong URL, or a job that has not
    committed anything yet."""


def committed_shards(dst: Folder, run_id: str | None = None) -> list[tuple[str, str]]:
    """(run id, shard id) of every committed shard (of one run, if given), in run then
    shard order."""
    prefix = layout.commits_dir(run_id) if run_id else layout.RUNS_DIR
    return [found for key in dst.list(prefix) if (found := layout.parse_commit(key))]


def require_committed(dst: Folder) -> list[tuple[str, str]]:
    """The committed shards; raises NothingCommitted when there are none, so that a
    mistyped destination is an error rather than an empty export."""
    shards = committed_shards(dst)
    if not shards:
        raise NothingCommitted(f"{dst.url} has no committed shards: not a segpipe destination, "
                               "or no shard of its job has finished yet")
    return shards


def table_files(dst: Folder, table: str, shards: Shards | None = None) -> list[str]:
    """Paths (on `dst.fs`) of one table's files of the committed shards."""
    shards = committed_shards(dst) if shards is None else shards
    return [dst.path(layout.table_file(table, run_id, sid)) for run_id, sid in shards]


def table_dataset(dst: Folder, table: str, shards: Shards | None = None) -> ds.Dataset:
    """One table of the committed shards as a pyarrow dataset: the fixed schema plus the
    Hive `run` partition column (a string). Query it with pyarrow, DuckDB or Polars."""
    schema = tables.SCHEMAS[table].append(RUN_PARTITION)
    import pyarrow.dataset as ds

    partitioning = ds.partitioning(pa.schema([RUN_PARTITION]), flavor="hive")
    return ds.dataset(table_files(dst, table, shards), schema=schema, format="parquet",
                      filesystem=dst.fs, partitioning=partitioning,
                      partition_base_dir=dst.path(layout.table_dir(table)))
