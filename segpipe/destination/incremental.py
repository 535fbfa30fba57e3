"""Incremental runs: what a destination has already seen, and what later runs superseded.

An image is identified by its id (from its URI) and its content version (ETag, or size and
mtime, from the listing). A later run annotates an image again only when its version
changed; the earlier run's rows are then superseded: they stay in the tables, and the
`superseded` table says which (run, image) pairs a later run replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np
import pyarrow as pa

from segpipe.core.items import ImageRef
from segpipe.destination import layout
from segpipe.destination.committed import Shards, committed_shards, table_dataset
from segpipe.formats import tables
from segpipe.io.storage import Folder


def _images_table(dst: Folder, shards: Shards, columns: list[str]) -> pa.Table:
    return table_dataset(dst, "images", shards).to_table(columns=columns)


def seen_filter(dst: Folder) -> Callable[[ImageRef], bool]:
    """True for an image already annotated at `dst` with the same content version.

    Images that ended in the errors table are not "seen": the next run tries them again.
    A source that gives no version (a manifest of URLs) is matched by id alone.
    """
    shards = committed_shards(dst)
    if not shards:
        return lambda ref: False
    table = _images_table(dst, shards, ["image_id", "source_version", "status"])
    known: dict[int, str | None] = {}
    # Rows come in run order, so the latest run's version of an image wins.
    for image, version, status in zip(table.column("image_id").to_pylist(),
                                      table.column("source_version").to_pylist(),
                                      table.column("status").to_pylist(), strict=True):
        if status == "ok":
            known[image] = version
        else:
            known.pop(image, None)

    def seen(ref: ImageRef) -> bool:
        if ref.image_id not in known:
            return False
        return ref.version is None or known[ref.image_id] == ref.version

    return seen


def superseded_by_later_runs(dst: Folder, shards: Shards | None = None) -> dict[str, np.ndarray]:
    """For each run, the sorted ids of its images that a later run annotated again.

    Only ids are held (8 bytes an image), and only when the destination has several runs.
    """
    shards = committed_shards(dst) if shards is None else list(shards)
    runs = sorted({run_id for run_id, _ in shards})
    out: dict[str, np.ndarray] = {run_id: np.empty(0, dtype=np.int64) for run_id in runs}
    if len(runs) < 2:
        return out
    later = np.empty(0, dtype=np.int64)
    for run_id in reversed(runs):
        out[run_id] = later
        ids = _images_table(dst, [s for s in shards if s[0] == run_id], ["image_id", "status"])
        ok = np.asarray(ids.column("status").to_pylist()) == "ok"
        later = np.union1d(later, ids.column("image_id").to_numpy()[ok])
    return out


def is_superseded(superseded: dict[str, np.ndarray], run_id: str, image_id: int) -> bool:
    ids = superseded.get(run_id)
    if ids is None or ids.size == 0:
        return False
    i = int(np.searchsorted(ids, image_id))
    return i < ids.size and int(ids[i]) == image_id


def write_superseded(dst: Folder, run_id: str, created_at: datetime,
                     shards: Shards | None = None) -> int:
    """Record which earlier-run rows this run's images replace, as one Parquet file of the
    `superseded` table; deterministic, so a resumed run rewrites the same bytes. `shards`:
    the committed shards, when the caller has listed them already."""
    shards = committed_shards(dst) if shards is None else shards
    earlier = [s for s in shards if s[0] < run_id]
    mine = [s for s in shards if s[0] == run_id]
    if not earlier or not mine:
        return 0
    now = _images_table(dst, mine, ["image_id", "image_uri", "status"]).to_pylist()
    current = {r["image_id"]: r["image_uri"] for r in now if r["status"] == "ok"}
    rows = []
    for row in _images_table(dst, earlier, ["image_id", "run", "status"]).to_pylist():
        if row["image_id"] in current and row["status"] == "ok":
            rows.append({"image_id": row["image_id"], "image_uri": current[row["image_id"]],
                         "run_id": row["run"], "superseded_by_run_id": run_id,
                         "created_at": created_at})
    rows.sort(key=lambda r: (r["run_id"], r["image_id"]))
    dst.write_bytes(layout.superseded_file(run_id),
                    tables.to_parquet_bytes("superseded", rows))
    return len(rows)
