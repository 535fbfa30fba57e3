"""The review loop's subcommands, `import` and `review-report`, for the `segpipe` command.

Kept here so the CLI module stays small; the work is imported when a command runs, so the
command starts without loading the review tools' libraries.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from segpipe.formats.exports import REVIEW_SOURCES


def add_review_commands(sub: Any, json_object: Callable[[str], dict[str, Any]]) -> None:
    p = sub.add_parser(
        "import", help="import reviewers' corrections into DST/reviewed and the reviews table",
        description="Read a review tool's export, match its images and categories to DST's, and "
        "write the corrected labels to DST/reviewed/ (COCO panoptic) and one row per segment "
        "outcome to DST/tables/reviews/. Bad input writes nothing; the same export twice "
        "changes nothing; a newer export replaces the reviews of the images it covers.")
    p.add_argument("dst", help="a segpipe destination, local or s3://")
    p.add_argument("--from", dest="source", required=True, choices=REVIEW_SOURCES,
                   help="labelstudio: a project's JSON export; cvat: a COCO 1.0 export with "
                   "RLE masks; coco-panoptic: a folder with panoptic.json and panoptic/")
    p.add_argument("path", help="the export file (or COCO-panoptic folder), any fsspec URL")
    p.add_argument("--image-root", default=None, help="match file names as paths below this "
                   "prefix of DST's image URIs (as given to `segpipe export --image-root`)")
    p.add_argument("--add-categories", action="store_true",
                   help="accept category names DST's label set lacks, as new categories")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("review-report", help="how good DST's pre-labels were, from its reviews")
    p.add_argument("dst")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write-thresholds", default=None, metavar="FILE",
                   help="write the suggested per-class score thresholds (for annotate "
                   "--class-thresholds)")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_review_report)


def cmd_import(args: argparse.Namespace) -> int:
    from segpipe.review.importing import run_import

    done = run_import(args.dst, args.source, args.path, image_root=args.image_root,
                      add_categories=args.add_categories, storage_options=args.storage_options)
    if not done["written"]:
        print(f"already imported (import {done['import_id']}): nothing changed")
        return 0
    print(f"imported {done['images']} reviewed images (import {done['import_id']}); "
          f"{done['not_reviewed']} tasks not reviewed")
    print("  segments: " + ", ".join(f"{k} {v}" for k, v in done["segments"].items()))
    print(f"  overlapping masks: {done['reassigned_pixels']} pixels went to the later mask")
    if done["added_categories"]:
        print(f"  new categories: {', '.join(done['added_categories'])}")
    return 0


def cmd_review_report(args: argparse.Namespace) -> int:
    from segpipe.review.report import format_review_report, review_report
    from segpipe.review.thresholds import write_thresholds

    report = review_report(args.dst, storage_options=args.storage_options)
    print(json.dumps(report, indent=2) if args.json else format_review_report(report))
    if args.write_thresholds:
        write_thresholds(args.write_thresholds, report["thresholds"], args.storage_options)
    return 0
