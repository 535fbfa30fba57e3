"""The `segpipe` command: its subcommands and what each runs. The annotate flags and their
mapping onto JobConfig are in `app.options`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from segpipe.app.options import add_job_options, config_from_args, json_object
from segpipe.formats.exports import EXPORT_FORMATS
from segpipe.review.commands import add_review_commands
from segpipe.train.commands import add_finetune_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpipe", description="Auto-label images at scale with universal segmentation on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("annotate", help="segment images into COCO-panoptic + Parquet pre-labels",
                       description="Plan SRC into shards and annotate them on a pool of Ray "
                       "workers; rerun the same command to resume.")
    add_job_options(p)
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("run", help="run a YAML job spec (jobs/*.yaml): its steps, in order",
                       description="Run the annotate and export steps of a job spec. Options "
                       "given here override the spec's annotate fields.")
    p.add_argument("spec", help="job spec, a local path or any fsspec URL")
    p.add_argument("--src", default=argparse.SUPPRESS, help="override the spec's src")
    p.add_argument("--dst", default=argparse.SUPPRESS, help="override the spec's dst")
    add_job_options(p, required=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="planned, committed, failed and pending shards of DST")
    p.add_argument("dst")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("runs", help="the runs recorded at DST: time, images, errors, model, duration")
    p.add_argument("dst")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("eval", help="panoptic quality (PQ/SQ/RQ) of DST against ground truth")
    p.add_argument("pred_dst", help="a segpipe destination (its panoptic.json and panoptic/)")
    p.add_argument("gt", help="folder with the ground truth panoptic.json and panoptic/ PNGs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export DST's committed pre-labels to COCO, CVAT or "
                       "Label Studio", description="Write DST's committed shards as a COCO "
                       "instance file, a CVAT COCO 1.0 file, or Label Studio tasks with brush "
                       "predictions (plus label_config.xml beside them).")
    p.add_argument("dst", help="a segpipe destination, local or s3://")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="coco-instance: COCO instance JSON with RLE masks (thing segments of "
                   "panoptic and semantic runs); cvat: the COCO 1.0 file CVAT imports as masks; "
                   "labelstudio: Label Studio tasks with brush-mask predictions; "
                   "coco-panoptic: a COCO-panoptic dataset folder; coco-results: the detections "
                   "list pycocotools' loadRes takes")
    p.add_argument("--out", required=True, help="the file to write (the folder, for "
                   "coco-panoptic), local or any fsspec URL")
    p.add_argument("--image-prefix", default=None, help="name images by HTTP URL: this prefix "
                   "replaces --image-root in each source URI (e.g. https://cdn.example.com/lake/)")
    p.add_argument("--image-root", default=None, help="the part of the source URIs that "
                   "--image-prefix replaces (default: scheme and bucket, e.g. s3://lake/, or / "
                   "for local paths); for cvat, images are named by their path below it")
    p.add_argument("--min-score", type=float, default=None,
                   help="leave out segments scored below this")
    p.add_argument("--things-only", action=argparse.BooleanOptionalAction, default=None,
                   help="only segments of thing categories (default: yes for coco-instance of "
                   "panoptic and semantic runs, no otherwise)")
    p.add_argument("--from-name", default="label",
                   help="labelstudio: name of the BrushLabels tag (label)")
    p.add_argument("--to-name", default="image", help="labelstudio: name of the Image tag (image)")
    p.add_argument("--order", choices=("committed", "priority"), default="committed",
                   help="committed: DST's order (default); priority: the images that most need a "
                   "reviewer first (the images table's review_priority)")
    p.add_argument("--limit", type=int, default=None, help="export only the first N images of "
                   "--order (with --order priority: the N that most need a reviewer)")
    p.add_argument("--subset", default="default", help="coco-panoptic: the subset's name in "
                   "annotations/panoptic_<subset>.json and images/<subset>/ (default)")
    p.add_argument("--ids-from", default=None, help="coco-panoptic, coco-results, coco-instance, "
                   "cvat: a COCO or COCO-panoptic ground truth whose image ids (matched by base "
                   "file name) and category ids (matched by name) the export takes")
    p.add_argument("--skip-unmatched", action="store_true", help="with --ids-from: leave out "
                   "images the ground truth does not name (default: refuse them)")
    p.add_argument("--string-ids", action="store_true", help="write image ids as JSON strings, "
                   "for readers in JavaScript (whose numbers lose 63-bit ids)")
    p.add_argument("--images", dest="image_files", choices=("copy", "link"), default=None,
                   help="coco-panoptic: copy or symlink (local only) the images into images/<subset>/")
    p.add_argument("--base-names", action="store_true", help="coco-instance: name images by "
                   "base file name, not URI (Datumaro refuses absolute names)")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("preview", help="overlay previews and a static HTML gallery of DST",
                       description="Draw each committed image with its segments and write "
                       "index.html, a gallery with paging and filters, beside the overlays.")
    p.add_argument("dst", help="a segpipe destination, local or s3://")
    p.add_argument("--out", default=None,
                   help="folder for index.html and images/ (default: DST/preview)")
    p.add_argument("--limit", type=int, default=200,
                   help="how many images to draw, in committed order (200)")
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("synth", help="write synthetic scenes with COCO-panoptic ground truth")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage-options", type=json_object, default=None)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="synthesize scenes, annotate them with builtin:demo, evaluate")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=999)
    p.set_defaults(func=cmd_demo)

    add_review_commands(sub, json_object)
    add_finetune_command(sub, json_object)
    return parser


def cmd_annotate(args: argparse.Namespace) -> int:
    from segpipe.app.annotate import annotate

    config = config_from_args(args)
    summary = annotate(config)
    _print_outputs(config.dst, summary)
    return 0


def _print_outputs(dst: str, summary: dict[str, Any]) -> None:
    root = dst.rstrip("/")
    print(f"run {summary['run_id']}: {summary['images']} images, {summary['annotated']} annotated, "
          f"{summary['errors']} errors, {summary['segments']} segments "
          f"({summary['images_per_s']} images/s)")
    if summary.get("skipped"):
        from segpipe.sources.base import describe_skipped

        print(f"  skipped:       {describe_skipped(summary['skipped'])} (listed, not planned)")
    if summary.get("phases"):
        print("  phases:        " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s"
                                             for k, v in summary["phases"].items()))
    print(f"  COCO panoptic: {root}/panoptic.json  (PNGs in {root}/panoptic/)")
    print(f"  tables:        {root}/tables/segments/  {root}/tables/images/  {root}/tables/errors/")
    print(f"  run summary:   {root}/_segpipe/runs/{summary['run_id']}/summary.json")


def cmd_run(args: argparse.Namespace) -> int:
    from segpipe.app.jobspec import load_spec, run_spec

    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("command", "func", "spec", "verbose")}
    return run_spec(load_spec(args.spec), overrides)


def cmd_status(args: argparse.Namespace) -> int:
    from segpipe.app.status import format_status, job_status
    from segpipe.io.storage import Folder

    status = job_status(Folder(args.dst, args.storage_options or {}))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from segpipe.app.status import format_runs, run_rows
    from segpipe.io.storage import Folder

    rows = run_rows(Folder(args.dst, args.storage_options or {}))
    print(json.dumps(rows, indent=2) if args.json else format_runs(rows))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from segpipe.tools.evaluate import evaluate, format_report

    pred, gt = args.pred_dst.rstrip("/"), args.gt.rstrip("/")
    result = evaluate(f"{pred}/panoptic.json", f"{pred}/panoptic", f"{gt}/panoptic.json",
                      f"{gt}/panoptic", storage_options=args.storage_options)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from segpipe.tools.export import run_export

    counts = run_export(args.dst, format=args.format, out=args.out,
                        image_prefix=args.image_prefix, image_root=args.image_root,
                        storage_options=args.storage_options, min_score=args.min_score,
                        things_only=args.things_only, from_name=args.from_name,
                        to_name=args.to_name, order=args.order, limit=args.limit,
                        subset=args.subset, ids_from=args.ids_from,
                        skip_unmatched=args.skip_unmatched, string_ids=args.string_ids,
                        image_files=args.image_files, base_names=args.base_names)
    print(f"wrote {counts['images']} images and {counts['annotations']} annotations from "
          f"{counts['shards']} committed shards to {counts['out']}")
    if "label_config" in counts:
        print(f"  Label Studio labeling config: {counts['label_config']}")
    if counts.get("skipped"):
        print(f"  left out {counts['skipped']} images that {args.ids_from} does not name")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from segpipe.tools.preview import write_preview

    url = write_preview(args.dst, out=args.out, limit=args.limit,
                        storage_options=args.storage_options)
    print(f"gallery: {url}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from segpipe.demo.synth import write_scenes

    write_scenes(args.out, args.count, args.seed, storage_options=args.storage_options)
    print(f"wrote {args.count} scenes to {args.out} (images/, panoptic.json, panoptic/)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from segpipe.demo.run import run_demo

    return run_demo(args.out, count=args.count, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Their debug logs print request headers, signatures included: never below INFO.
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger(noisy).level))
    try:
        try:
            return int(args.func(args) or 0)
        finally:  # a local Ray the command started goes now, not at the interpreter's exit
            if (cluster := sys.modules.get("segpipe.runtime.cluster")) is not None:
                cluster.stop_local()  # only a command that used Ray imported this module
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into messages
        from segpipe.core.errors import SegpipeError
        from segpipe.io.storage import describe_error, redact

        # segpipe's own errors are messages that say what to fix; anything else is unexpected
        # (bad input a check missed, or a defect) and keeps its traceback under -v.
        expected = isinstance(exc, (SegpipeError, ValueError, OSError))
        if args.verbose and not isinstance(exc, SegpipeError):
            raise
        print(f"segpipe {args.command}: error: {redact(describe_error(exc))}", file=sys.stderr)
        if not expected:
            print("(an unexpected error: run again with -v for its traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
