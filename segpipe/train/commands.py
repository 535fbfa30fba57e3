"""The `segpipe finetune` subcommand. Its defaults are FinetuneConfig's, never repeated here;
the training stack is imported when the command runs, so the CLI starts light."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from segpipe.train.config import FinetuneConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}


def _shown(name: str) -> str:
    return f" (default: {_DEFAULTS[name]})"


def add_finetune_command(sub: Any, json_object: Callable[[str], dict[str, Any]]) -> None:
    S = argparse.SUPPRESS
    p = sub.add_parser("finetune", help="fine-tune a model on reviewed labels (Ray Train)",
                       description="Fine-tune a universal segmentation model on a COCO-panoptic "
                       "dataset on Ray Train; rerun the same command to resume.")
    p.add_argument("train", help="a COCO-panoptic folder (panoptic.json, panoptic/, images/ or "
                   "image URIs as file names), e.g. `segpipe synth` output, or a destination "
                   "with imported reviews (its reviewed/)")
    p.add_argument("--base-model", required=True, help="what `annotate --model` takes: hub id, "
                   "folder, object-store URL or builtin:demo")
    p.add_argument("--out", required=True, help="model folder to write, local or object store")
    p.add_argument("--val", default=S, help="a COCO-panoptic folder to measure PQ on (default: "
                   "a held-out share of TRAIN, chosen by a hash of each image's file name)")
    p.add_argument("--val-fraction", type=float, default=S,
                   help="the held-out share without --val" + _shown("val_fraction"))
    p.add_argument("--epochs", type=int, default=S, help="passes over TRAIN" + _shown("epochs"))
    p.add_argument("--batch-size", type=int, default=S,
                   help="images per step and worker" + _shown("batch_size"))
    p.add_argument("--lr", type=float, default=S, help="learning rate" + _shown("lr"))
    p.add_argument("--max-minutes", type=float, default=S,
                   help="stop after this much training time, over resumed runs too")
    p.add_argument("--num-workers", type=int, default=S,
                   help="Ray Train workers (DDP)" + _shown("num_workers"))
    p.add_argument("--gpus-per-worker", type=float, default=S, help=_shown("gpus_per_worker"))
    p.add_argument("--cpus-per-worker", type=float, default=S, help=_shown("cpus_per_worker"))
    p.add_argument("--threads-per-worker", type=int, default=S,
                   help="torch threads per worker (default: torch's)")
    p.add_argument("--address", default=S, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--checkpoint-dir", default=S,
                   help="where checkpoints go (default: OUT.checkpoints beside --out)")
    p.add_argument("--seed", type=int, default=S, help=_shown("seed"))
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S)
    p.add_argument("--storage-options", type=json_object, default=S)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from segpipe.train.run import finetune

    values = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose")}
    summary = finetune(FinetuneConfig(**values))
    before, after = summary["pq_before"], summary["pq_after"]
    shown = (f"held-out PQ {before['All']:.3f} -> {after['All']:.3f}" if before and after
             else "no held-out images")
    print(f"fine-tuned {summary['steps']} steps, {summary['epochs']} epochs in "
          f"{summary['train_seconds']} s of training; {shown}")
    print(f"  model: {summary['out']}  (load it with: segpipe annotate SRC DST --model "
          f"{summary['out']})")
    return 0
