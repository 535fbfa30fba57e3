"""The function every Ray Train worker runs: the model's own loss, DDP, a report per epoch.

Each epoch ends with the held-out PQ (first worker) and a checkpoint; a time budget
(`--max-minutes`, training time summed over resumed runs) ends training early, at a
step all workers agree on.
"""

from __future__ import annotations

import math
import random
import tempfile
from typing import Any

import torch

from segpipe.train import progress
from segpipe.train.batches import make_batch
from segpipe.train.checkpoints import TrainState, read_checkpoint, write_checkpoint
from segpipe.train.config import FinetuneConfig
from segpipe.train.dataset import Example
from segpipe.train.labels import LabelPlan, refit_head
from segpipe.train.metrics import HeldOutImage, held_out_pq, read_held_out


def learning_rate(settings: FinetuneConfig, step: int, progress_done: float) -> float:
    """Linear warmup, then cosine decay over the run's progress (steps or time budget)."""
    warm = min(1.0, (step + 1) / max(1, settings.warmup_steps))
    return settings.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(progress_done, 1.0)))


def steps_per_epoch(settings: FinetuneConfig, train_count: int, world: int) -> int:
    """The same count on every worker (DDP steps in lockstep)."""
    return max(1, math.ceil(train_count / (settings.batch_size * world)))


def build_model(settings: FinetuneConfig, plan: LabelPlan) -> tuple[Any, Any, str]:
    """(model with the plan's label set, processor, family), on the CPU."""
    from segpipe.model.loading import load_model

    loaded = load_model(settings.base_model, device="cpu", storage_options=settings.storage_options)
    model = loaded.model if plan.unchanged else refit_head(loaded.model, plan)
    return model, loaded.processor, loaded.family


def train_loop(cfg: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from segpipe.runtime.allocator import keep_freed_memory

    keep_freed_memory()  # each step frees and allocates its activations again
    settings: FinetuneConfig = cfg["settings"]
    plan: LabelPlan = cfg["plan"]
    train_set: list[Example] = cfg["train"]
    val_set: list[Example] = cfg["val"]
    if settings.threads_per_worker:
        torch.set_num_threads(settings.threads_per_worker)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model, processor, family = build_model(settings, plan)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = read_checkpoint(folder, model, optimizer)
        state.resumed_from_epoch.append(state.epoch)
    if state.history and state.history[-1].get("finished"):
        return  # this run already finished; its last checkpoint is the result
    device = ray.train.torch.get_device()
    net = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "find_unused_parameters": True})
    model = getattr(net, "module", net)
    _move_optimizer(optimizer, device)
    # Read once per run: the held-out PQ of every epoch scores the same images (first worker).
    held_out = read_held_out(val_set, settings.storage_options) if rank == 0 else []
    if state.pq_before is None and rank == 0:
        state.pq_before = _pq(model, processor, held_out, plan, family, device, settings)
    per_epoch = steps_per_epoch(settings, len(train_set), world)
    total_steps = per_epoch * settings.epochs
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    board = cfg.get("board") if rank == 0 else None
    mine = train_set[rank::world] or train_set
    while state.epoch < settings.epochs:
        rng = random.Random(settings.seed * 1_000_003 + state.epoch * 101 + rank)
        order = mine * math.ceil(per_epoch * settings.batch_size / len(mine))
        rng.shuffle(order)
        losses, out_of_time, started = [], False, progress.now()
        for index in range(per_epoch):
            if budget is not None and _agree(state.train_seconds >= budget, world, device):
                out_of_time = True
                break
            tick = progress.now()
            batch = make_batch(order[index * settings.batch_size:(index + 1) * settings.batch_size],
                               processor, plan.label_of, family=family, rng=rng, flip=settings.flip,
                               scale_jitter=settings.scale_jitter,
                               storage_options=settings.storage_options)
            done = max(state.step / total_steps, state.train_seconds / budget if budget else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, state.step, done)
            loss = net(**_to(batch, device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            state.step += 1
            state.train_seconds += progress.now() - tick
            rate = (index + 1) / max(1e-9, progress.now() - started)
            progress.post(board, {
                "epoch": state.epoch + 1, "epochs": settings.epochs, "step": index + 1,
                "steps": per_epoch, "loss": losses[-1], "steps_per_s": rate,
                "eta_s": progress.eta_seconds(state.step, total_steps, rate, state.train_seconds,
                                              budget)})
        state.epoch += 1
        _end_epoch(state, losses, model, processor, optimizer, held_out, plan, family, device,
                   settings, rank, finished=out_of_time or state.epoch == settings.epochs)
        if out_of_time:
            break


def _end_epoch(state: TrainState, losses: list[float], model: Any, processor: Any,
               optimizer: torch.optim.Optimizer, held_out: list[HeldOutImage], plan: LabelPlan,
               family: str, device: torch.device, settings: FinetuneConfig, rank: int, *,
               finished: bool) -> None:
    """Held-out PQ, the epoch's entry in the history, a checkpoint, and Ray Train's report."""
    import ray.train

    metrics: dict[str, Any] = {"epoch": state.epoch, "step": state.step,
                               "loss": sum(losses) / len(losses) if losses else None,
                               "train_seconds": round(state.train_seconds, 1)}
    if rank == 0:
        pq = _pq(model, processor, held_out, plan, family, device, settings)
        metrics |= {"pq": pq["All"]["pq"] if pq else None, "finished": finished}
        state.history.append(metrics | {"scores": pq})
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            write_checkpoint(folder, model, processor, plan, optimizer, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics, checkpoint=None)


def _pq(model: Any, processor: Any, held_out: list[HeldOutImage], plan: LabelPlan, family: str,
        device: torch.device, settings: FinetuneConfig) -> dict[str, Any] | None:
    if not held_out:
        return None
    return held_out_pq(model, processor, held_out, plan, family=family, device=device,
                       batch_size=settings.batch_size)


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every worker as soon as it is true on any (they must stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            moved[key] = [v.to(device) for v in value]
        else:
            moved[key] = value
    return moved


def _move_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and key != "step":
                per_param[key] = value.to(device)

