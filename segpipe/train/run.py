"""`segpipe finetune`: read the dataset, plan the labels, train on Ray Train, publish the model."""

from __future__ import annotations

import time
from typing import Any

from segpipe.core.errors import SegpipeError
from segpipe.io.storage import redact_uri
from segpipe.labels import LabelSet
from segpipe.model.loading import model_labels
from segpipe.train.card import model_card
from segpipe.train.checkpoints import checkpoint_root, ray_storage, read_state
from segpipe.train.config import FinetuneConfig, FinetuneError
from segpipe.train.dataset import Dataset, read_dataset, split
from segpipe.train.labels import LabelPlan, plan_labels
from segpipe.train.loop import train_loop
from segpipe.train.progress import ProgressBoard, ProgressPrinter
from segpipe.train.save import publish


class FinetuneFailed(SegpipeError, RuntimeError):
    """Training stopped with an error; the message says where."""


def prepare(settings: FinetuneConfig) -> tuple[Dataset, list[Any], list[Any], LabelPlan, LabelSet]:
    dataset = read_dataset(settings.train, settings.storage_options)
    if settings.val:
        train, val = dataset.examples, read_dataset(settings.val, settings.storage_options).examples
    else:
        train, val = split(dataset.examples, settings.val_fraction)
    base, count = model_labels(settings.base_model, storage_options=settings.storage_options)
    return dataset, train, val, plan_labels(dataset.categories, base, count), base


def finetune(settings: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune; returns a summary (where the model went, PQ before and after, timings)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from segpipe.runtime.cluster import init_ray

    started = time.monotonic()
    check_out(settings)
    dataset, train, val, plan, base = prepare(settings)
    init_ray(settings.address)
    board = ProgressBoard.remote()  # type: ignore[attr-defined]
    storage_path, storage_fs = ray_storage(
        checkpoint_root(settings.out, settings.checkpoint_dir), settings.storage_options)
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"settings": settings, "plan": plan, "train": train, "val": val,
                           "board": board},
        scaling_config=ScalingConfig(num_workers=settings.num_workers,
                                     use_gpu=settings.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=settings.run_name(), storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    with ProgressPrinter(board, enabled=settings.progress):
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train wraps the worker's error; name the run
            raise FinetuneFailed(f"fine-tuning {redact_uri(settings.train)} failed: "
                                 f"{_cause(exc)}") from exc
    ray.kill(board)
    if result.checkpoint is None:
        raise FinetuneFailed(f"fine-tuning {redact_uri(settings.train)} left no checkpoint")
    data = {"train_url": dataset.url, "train_images": len(train), "val_images": len(val),
            "val_source": (f"`{redact_uri(settings.val)}`" if settings.val else
                           f"{settings.val_fraction:.0%} of the images, by a hash of each file name")}
    labels = {"categories": plan.categories, **plan.describe(base)}
    with result.checkpoint.as_directory() as folder:
        state = read_state(folder)  # not the optimizer's state, which only a resume needs
        written = publish(folder, settings.out, model_card(settings, state, data, labels),
                          settings.storage_options)
    after = state.history[-1]["scores"] if state.history else None
    return {"out": redact_uri(settings.out), "files": written, "epochs": state.epoch,
            "steps": state.step, "train_seconds": round(state.train_seconds, 1),
            "wall_seconds": round(time.monotonic() - started, 1),
            "resumed_from_epoch": state.resumed_from_epoch,
            "pq_before": _pq(state.pq_before), "pq_after": _pq(after),
            "history": [{k: v for k, v in h.items() if k != "scores"} for h in state.history],
            "labels": labels, "train_images": len(train), "val_images": len(val)}


def _pq(scores: dict[str, Any] | None) -> dict[str, float] | None:
    if not scores:
        return None
    return {group: round(scores[group]["pq"], 4) for group in ("All", "Things", "Stuff")}


def _cause(exc: BaseException) -> str:
    """The innermost error's message: Ray Train's wrappers add only their own boilerplate."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def check_out(settings: FinetuneConfig) -> None:
    if settings.out.rstrip("/") == settings.train.rstrip("/"):
        raise FinetuneError("--out must not be the training data's folder")
