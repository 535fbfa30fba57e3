"""Training checkpoints on storage, and resuming from them.

A checkpoint is a folder: `model/` (what `save.py` publishes: safetensors, processor
config, labels.json), `state.json` (step, epoch, training time, history: what the driver
reads) and `optimizer.pt` (the optimizer's state, as large as the weights twice over: only a
resume loads it).
Ray Train keeps them under `checkpoint_root(...)/<run name>/`; a run started again with
the same settings finds its latest checkpoint there and goes on from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from fsspec.core import split_protocol

from segpipe.io.storage import filesystem, is_local_url
from segpipe.model.loading import LABELS_FILE
from segpipe.train.labels import LabelPlan

MODEL_DIR = "model"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
# Checkpoints of earlier versions held the optimizer and the training state in one file; a
# run started before the split still resumes from them.
LEGACY_STATE_FILE = "state.pt"


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    train_seconds: float = 0.0  # training time so far, over every resumed run
    pq_before: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch
    resumed_from_epoch: list[int] = field(default_factory=list)


def checkpoint_root(out: str, checkpoint_dir: str | None) -> str:
    """`--checkpoint-dir`, else a folder beside `--out` on its filesystem (not inside it:
    `annotate --model` copies the whole model folder)."""
    return checkpoint_dir or f"{out.rstrip('/')}.checkpoints"


def ray_storage(root: str, storage_options: dict[str, Any]) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig: a local path as it is;
    an object-store URL through our own fsspec filesystem, so its options and endpoint hold."""
    if is_local_url(root):
        local = split_protocol(root)[1] if split_protocol(root)[0] else root
        return os.path.abspath(local), None
    import pyarrow.fs

    fs, path = filesystem(root, storage_options)
    return path.rstrip("/"), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def save_model(model: Any, processor: Any, plan: LabelPlan, folder: str) -> None:
    """The model folder `annotate --model` loads."""
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    with open(os.path.join(folder, LABELS_FILE), "w") as f:
        json.dump(plan.categories, f, indent=2)


def write_checkpoint(folder: str, model: Any, processor: Any, plan: LabelPlan,
                     optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    save_model(model, processor, plan, os.path.join(folder, MODEL_DIR))
    torch.save(optimizer.state_dict(), os.path.join(folder, OPTIMIZER_FILE))
    with open(os.path.join(folder, STATE_FILE), "w") as f:
        json.dump(asdict(state), f)


def read_state(folder: str) -> TrainState:
    """The checkpoint's TrainState, without its weights or optimizer state."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path) and os.path.exists(os.path.join(folder, LEGACY_STATE_FILE)):
        return TrainState(**_legacy(folder)["state"])
    with open(path) as f:
        return TrainState(**json.load(f))


def _legacy(folder: str) -> dict[str, Any]:
    saved: dict[str, Any] = torch.load(os.path.join(folder, LEGACY_STATE_FILE), weights_only=True)
    return saved


def read_checkpoint(folder: str, model: Any, optimizer: torch.optim.Optimizer | None) -> TrainState:
    """Load the checkpoint's weights into `model` (and optimizer state); its TrainState.

    The weights load through `from_pretrained`, which knows how transformers names them on
    disk; a strict copy into `model` then fails loudly on a checkpoint of another model."""
    restored = type(model).from_pretrained(os.path.join(folder, MODEL_DIR), use_safetensors=True)
    model.load_state_dict(restored.state_dict())
    if optimizer is not None:
        path = os.path.join(folder, OPTIMIZER_FILE)
        optimizer.load_state_dict(torch.load(path, weights_only=True) if os.path.exists(path)
                                  else _legacy(folder)["optimizer"])
    return read_state(folder)
