"""`segpipe review-report`: how good the pre-labels were, measured by their reviews.

PQ / SQ / RQ score DST's pre-labels (its merged panoptic.json, latest run) against the
reviewed labels (DST/reviewed/), with `segpipe eval`'s code, images paired by source URI.
Outcome counts come from each image's latest review; a relabeled segment counts for the
class it had before, an added one for the class it was given.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from segpipe.destination import layout, reader
from segpipe.destination.reviews import committed_imports, latest_reviews, reviewed_document
from segpipe.io.storage import Folder
from segpipe.review.reviewed import ReviewImportError
from segpipe.review.thresholds import suggest_thresholds
from segpipe.tools.evaluate import PanopticSet, evaluate_sets

OUTCOMES = ("accepted", "edited", "relabeled", "deleted", "added")


def review_report(dst_url: str | Folder, storage_options: dict[str, Any] | None = None,
                  ) -> dict[str, Any]:
    dst = reader.open_destination(dst_url, storage_options)
    document = reviewed_document(dst)
    if document is None:
        raise ReviewImportError(f"{dst.url} has no reviews yet: run segpipe import first")
    rows = latest_reviews(dst, document).to_pylist()
    # Each file once, through `dst`: the reviewed document was read above.
    prelabels = dst.read_json(layout.MERGED_PANOPTIC)
    scores = evaluate_sets(PanopticSet.in_folder(prelabels, dst, layout.MERGED_PNG_DIR),
                           PanopticSet.in_folder(document, dst, layout.REVIEWED_PNG_DIR),
                           full_names=True)
    thresholds = suggest_thresholds(rows)
    seconds = {r["image_id"]: r["reviewer_seconds"] for r in rows
               if r["reviewer_seconds"] is not None}
    return {
        "images_reviewed": len(document["images"]),
        "imports": len(committed_imports(document)),
        **{k: scores["All"][k] for k in ("pq", "sq", "rq")},
        "segments": _counts(rows),
        "per_class": _per_class(rows, scores["per_category"], thresholds),
        "reviewer_seconds": sum(seconds.values()) if seconds else None,
        "images_with_reviewer_seconds": len(seconds),
        "thresholds": thresholds,
    }


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    found = Counter(r["outcome"] for r in rows)
    return {k: found.get(k, 0) for k in OUTCOMES}


def _per_class(rows: list[dict[str, Any]], per_category: list[dict[str, Any]],
               thresholds: dict[str, float]) -> list[dict[str, Any]]:
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_class[row["category_after"] if row["outcome"] == "added"
                 else row["category_before"]].append(row)
    pq = {c["name"]: c for c in per_category}
    out = []
    for name in sorted(by_class):
        scored = pq.get(name, {})
        out.append({"name": name, **_counts(by_class[name]),
                    **{k: scored.get(k, 0.0) for k in ("pq", "sq", "rq")},
                    "suggested_threshold": thresholds.get(name)})
    return out


def format_review_report(report: dict[str, Any]) -> str:
    """The report as a readable table; scores x100 as the COCO tools print them."""
    seconds = report["reviewer_seconds"]
    lines = [f"images reviewed: {report['images_reviewed']} ({report['imports']} imports)",
             f"pre-labels vs reviews: PQ {100 * report['pq']:.1f}  SQ {100 * report['sq']:.1f}"
             f"  RQ {100 * report['rq']:.1f}",
             "segments: " + ", ".join(f"{k} {v}" for k, v in report["segments"].items()),
             "reviewer time: " + ("unknown" if seconds is None else
                                  f"{seconds:.0f} s over "
                                  f"{report['images_with_reviewer_seconds']} images"),
             "", f"{'class':<20}|{'PQ':>6}{'acc':>6}{'edit':>6}{'relab':>6}{'del':>6}"
             f"{'add':>6}{'threshold':>10}", "-" * 67]
    for c in report["per_class"]:
        threshold = "-" if c["suggested_threshold"] is None else f"{c['suggested_threshold']:.3f}"
        lines.append(f"{c['name'][:19]:<20}|{100 * c['pq']:6.1f}{c['accepted']:6d}"
                     f"{c['edited']:6d}{c['relabeled']:6d}{c['deleted']:6d}{c['added']:6d}"
                     f"{threshold:>10}")
    return "\n".join(lines)
