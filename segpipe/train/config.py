"""The frozen settings of one `segpipe finetune` run, validated where they are made."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from segpipe.core.config import check_count, check_resource, check_share, check_timeout
from segpipe.core.errors import SegpipeError


class FinetuneError(SegpipeError, ValueError):
    """Bad fine-tuning input or settings; the message names the file, image or flag."""


@dataclass(frozen=True)
class FinetuneConfig:
    train: str  # a COCO-panoptic folder, or a destination with reviewed/
    base_model: str
    out: str
    val: str | None = None  # a COCO-panoptic folder; else a held-out split of TRAIN
    val_fraction: float = 0.1
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    max_minutes: float | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch threads in each worker; 0: torch's default
    address: str | None = None
    checkpoint_dir: str | None = None  # default: a folder beside --out
    seed: int = 0
    scale_jitter: tuple[float, float] = (0.75, 1.25)
    flip: bool = True
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("train", "base_model", "out"):
            if not getattr(self, name):
                raise FinetuneError(f"{_flag(name)} is required")
        for name in ("epochs", "batch_size", "num_workers"):
            check_count(_flag(name), getattr(self, name))
        for name in ("warmup_steps", "threads_per_worker", "gpus_per_worker", "cpus_per_worker",
                     "seed"):
            check_resource(_flag(name), getattr(self, name))
        if not 0 < self.lr < 1:
            raise FinetuneError(f"--lr must be between 0 and 1, not {self.lr}")
        check_share("--val-fraction", self.val_fraction)
        if self.max_minutes is not None:
            check_timeout("--max-minutes", self.max_minutes)
        low, high = self.scale_jitter
        if not 0 < low <= high:
            raise FinetuneError(f"--scale-jitter must be 0 < low <= high, not {self.scale_jitter}")

    def run_name(self) -> str:
        """The Ray Train run's name: the same command gives the same name, so a rerun resumes
        from the run's checkpoints instead of starting over."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("progress", "address", "storage_options")}
        digest = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
        return f"finetune-{digest.hexdigest()[:16]}"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
