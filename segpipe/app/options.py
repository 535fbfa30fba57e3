"""The annotate flags, shared by `segpipe annotate` and `segpipe run SPEC` (as overrides), and
their mapping onto JobConfig, in exactly one place: `config_from_args`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from segpipe.core.config import (
    DTYPES,
    SOURCE_FORMATS,
    TASK_THRESHOLDS,
    TASKS,
    JobConfig,
    default_of,
)


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_job_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The annotate options; `segpipe run SPEC` reuses them as overrides (all optional)."""
    _add_job_options(p, required=required)
    # Help texts show JobConfig's defaults, never a copy of them.
    for action in p._actions:
        if action.help and "{default}" in action.help:
            action.help = action.help.replace("{default}", _default_text(action.dest))
        if action.help and "{task_default}" in action.help:
            action.help = action.help.replace("{task_default}", str(TASK_THRESHOLDS["panoptic"]))


def _default_text(name: str) -> str:
    value = default_of(name)
    if name == "max_image_bytes":
        return f"{value} = {value // 2**20} MiB"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _add_job_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    S = argparse.SUPPRESS
    if required:
        p.add_argument("src", help="images to annotate: a folder, prefix or glob, local or any "
                       "fsspec URL (s3://bucket/raw/, 's3://lake/**/*.jpg'), WebDataset .tar "
                       "shards, a Parquet table, or a manifest of URIs")
        p.add_argument("dst", help="output prefix, local or s3:// (see the README's output contract)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, help="hub id, local folder, object-store URL, or "
                   "builtin:demo (default: builtin:demo)")
    g.add_argument("--revision", default=S, help="model revision (branch, tag or commit) for hub ids")
    g.add_argument("--task", choices=TASKS, default=S, help="panoptic (default), instance or semantic")
    g.add_argument("--dtype", choices=tuple(DTYPES), default=S,
                   help="model precision: fp32 (default), bf16 or fp16")
    g.add_argument("--device", default=S, help="torch device for the model (default: the worker's "
                   "GPU if it has one, else cpu)")
    g.add_argument("--label-map", default=S, help="JSON file of categories {id,name,isthing,color} "
                   "for models whose labels match no bundled set (COCO panoptic, ADE20K, Cityscapes)")
    g.add_argument("--threshold", type=float, default=S, help="minimum query score to keep a "
                   "segment (default: {task_default}, as transformers; the original Mask2Former papers "
                   "evaluate panoptic at 0.8)")
    g.add_argument("--class-thresholds", default=S, metavar="FILE", help="JSON file of per-class "
                   "minimum scores ({\"format\": \"segpipe-class-thresholds\", \"version\": 1, "
                   "\"thresholds\": {NAME: SCORE}}); classes it does not list use --threshold")
    g.add_argument("--mask-threshold", type=float, default=S, help="mask probability threshold ({default})")
    g.add_argument("--overlap-mask-area-threshold", type=float, default=S,
                   help="drop a segment keeping less than this share of its mask ({default})")
    g.add_argument("--allow-pickle-weights", action="store_true", default=S,
                   help="also load non-safetensors weights (pickle; only for checkpoints you trust)")
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=S, help="images per model batch ({default})")
    g.add_argument("--shard-size", type=int, default=S,
                   help="images per shard, the unit of work, retry and commit ({default})")
    g.add_argument("--num-workers", type=int, default=S, help="Ray actors to run (default: one "
                   "per GPU; on a cluster without GPUs, one per 8 CPUs)")
    g.add_argument("--gpus-per-worker", type=float, default=S,
                   help="GPUs each worker declares, fractions allowed; 0: workers run on the CPU ({default})")
    g.add_argument("--cpus-per-worker", type=float, default=S,
                   help="CPUs each worker declares; 0: Ray reserves none ({default})")
    g.add_argument("--max-attempts", type=int, default=S,
                   help="attempts per shard before it is recorded as failed ({default})")
    g.add_argument("--max-error-rate", type=float, default=S, help="fail the job when more than "
                   "this share of images end in the errors table ({default}: never)")
    g.add_argument("--address", default=S, help="Ray cluster to join (default: RAY_ADDRESS, else a "
                   "local Ray)")
    g.add_argument("--read-threads", type=int, default=S,
                   help="concurrent object reads per worker ({default})")
    g.add_argument("--read-timeout", type=float, default=S, help="seconds one image's read may "
                   "take; a read that outlasts it is an errors row ({default})")
    g.add_argument("--shard-timeout", type=float, default=S, help="seconds a shard may take on "
                   "its worker before the worker is replaced and the shard retried (default: no "
                   "limit, since a healthy shard's time depends on its size, model and hardware)")
    g.add_argument("--node-wait", type=float, default=S, help="seconds to wait, when no node "
                   "can host any worker (a lost GPU node), for one to join before failing ({default})")
    g.add_argument("--max-image-pixels", type=int, default=S,
                   help="decompression-bomb limit: larger images become errors ({default})")
    g.add_argument("--max-image-bytes", type=int, default=S,
                   help="largest image file read; a bigger one becomes an errors row without "
                   "being read whole ({default})")
    g.add_argument("--jpeg-draft", action="store_true", default=S, help="decode JPEGs at the "
                   "smallest 1/2-1/8 scale the model's input still fits: faster, outputs at "
                   "full size, but not bit-equal to a full decode")
    g.add_argument("--incremental", action="store_true", default=S,
                   help="annotate only images not yet annotated at DST, as a new run")
    g.add_argument("--new-model", action="store_true", default=S,
                   help="re-label DST with a new model version (e.g. from `segpipe finetune`): "
                   "a new run over every image of SRC, recorded with its model; readers take "
                   "the newest run's labels per image")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="log lines instead of a progress bar")
    g.add_argument("--dashboard", action="store_true", default=S,
                   help="start the Ray dashboard with a local Ray (off: it costs seconds of start-up)")
    g = p.add_argument_group("source and storage")
    g.add_argument("--source-format", choices=SOURCE_FORMATS, default=S,
                   help="kind of SRC (default: picked from SRC)")
    g.add_argument("--image-column", default=S, help="Parquet source: column of image bytes")
    g.add_argument("--uri-column", default=S, help="Parquet/CSV source: column of image URIs")
    g.add_argument("--id-column", default=S, help="Parquet source: column carried as the row's id")
    g.add_argument("--allow-uri-schemes", default=S, metavar="SCHEMES",
                   help="manifest or URI table: more schemes its URIs may use, comma-separated "
                   "(e.g. http,file); by default only the list's own storage's, s3, gs, https, "
                   "and local files for a local list")
    g.add_argument("--allow-private-hosts", action="store_true", default=S,
                   help="manifest or URI table: let http(s) URIs reach loopback, private and "
                   "link-local addresses (such as the cloud metadata service); refused by default")
    g.add_argument("--storage-options", type=json_object, default=S,
                   help="JSON object of fsspec options for SRC and DST, over the standard AWS "
                   "environment and config files (e.g. '{\"endpoint_url\": \"http://...\"}')")


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> JobConfig:
    values = dict(base or {})
    values.update({k: v for k, v in vars(args).items() if k not in ("command", "func", "spec", "verbose")})
    return JobConfig.from_dict(values)
