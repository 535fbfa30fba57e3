"""Per-class score thresholds calibrated from reviews, and the file `annotate` reads them from.

A class's suggested threshold is the lowest pre-label score at which its pre-labels were
still mostly kept: sorting the class's reviewed pre-label segments by score, highest first,
it is the lowest score whose segments at or above it were kept (accepted or edited: the
reviewer kept the segment and its class) more often than not (KEPT_FRACTION). A class none
of whose segments meet that gets 1.0: its pre-labels were mostly thrown away. Classes
without scored pre-labels get no threshold.

File format: {"format": "segpipe-class-thresholds", "version": 1,
              "thresholds": {"<category name>": <score in [0, 1]>, ...}}
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from segpipe.core.class_thresholds import FORMAT, VERSION
from segpipe.io.storage import open_atomic

KEPT_FRACTION = 0.5
KEPT = ("accepted", "edited")


def suggest_thresholds(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Category name -> suggested score threshold, from rows of the reviews table."""
    by_class: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for row in rows:
        if row["prelabel_segment_id"] is not None and row["score"] is not None:
            by_class[row["category_before"]].append((float(row["score"]),
                                                     row["outcome"] in KEPT))
    return {name: _lowest_mostly_kept(scored) for name, scored in sorted(by_class.items())}


def _lowest_mostly_kept(scored: list[tuple[float, bool]]) -> float:
    threshold, kept = 1.0, 0
    ordered = sorted(scored, key=lambda s: -s[0])
    for n, (score, was_kept) in enumerate(ordered, start=1):
        kept += was_kept
        # Ties: a threshold keeps every segment of its score, so judge after the last of them.
        last_of_score = n == len(ordered) or ordered[n][0] != score
        if last_of_score and kept / n > KEPT_FRACTION:
            threshold = score
    return round(threshold, 6)


def thresholds_document(thresholds: Mapping[str, float]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "thresholds": dict(sorted(thresholds.items()))}


def write_thresholds(url: str, thresholds: Mapping[str, float],
                     storage_options: dict[str, Any] | None = None) -> None:
    with open_atomic(url, storage_options) as out:
        json.dump(thresholds_document(thresholds), out, indent=2)
        out.write("\n")
