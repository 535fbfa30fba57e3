"""Compare two destinations' outputs: `python -m tests.support.compare_outputs DST_A DST_B [COLUMN...]`.

Equal means: the same merged panoptic.json, the same bytes for every PNG, and the same
table rows in the same order, `created_at` (a run's start time) and any COLUMN given aside
(`source_version` when the sources were written anew: it holds their mtime). Prints one
JSON line with what was compared and what differs; exits 1 when something does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

TABLES = ("segments", "images", "errors", "superseded")


def rows(folder: Path, table: str, ignored: tuple[str, ...] = ()) -> list[dict]:
    out = []
    for path in sorted((folder / "tables" / table).glob("run=*/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            for column in ("created_at", *ignored):
                row.pop(column, None)
            out.append({"file": str(path.relative_to(folder)), **row})
    return out


def compare(a: Path, b: Path, ignored: tuple[str, ...] = ()) -> dict:
    differences: list[str] = []
    if json.loads((a / "panoptic.json").read_text()) != json.loads((b / "panoptic.json").read_text()):
        differences.append("panoptic.json")
    pngs = sorted(p.relative_to(a) for p in a.glob("*/*/*.png"))
    other = sorted(p.relative_to(b) for p in b.glob("*/*/*.png"))
    if pngs != other:
        differences.append("the set of PNG files")
    differences += [str(p) for p in pngs if (b / p).exists() and (a / p).read_bytes() != (b / p).read_bytes()]
    counts = {}
    for table in TABLES:
        left, right = rows(a, table, ignored), rows(b, table, ignored)
        counts[table] = len(left)
        if left != right:
            differences.append(f"tables/{table}")
    return {"pngs": len(pngs), "rows": counts, "differences": differences}


if __name__ == "__main__":
    result = compare(Path(sys.argv[1]), Path(sys.argv[2]), tuple(sys.argv[3:]))
    print(json.dumps(result))
    sys.exit(1 if result["differences"] else 0)
