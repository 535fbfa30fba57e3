"""MODEL_CARD.md of a fine-tuned model: its data, its settings, PQ before and after."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from segpipe.io.storage import redact_uri
from segpipe.train.checkpoints import TrainState
from segpipe.train.config import FinetuneConfig

SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "max_minutes",
            "num_workers", "gpus_per_worker", "val_fraction", "scale_jitter", "flip", "seed")


def _row(name: str, scores: dict[str, Any] | None) -> str:
    if not scores:
        return f"| {name} | - | - | - | - | - | - | - | - | - |"
    cells = [f"{100 * scores[g][k]:.1f}" for g in ("All", "Things", "Stuff") for k in ("pq", "sq", "rq")]
    return f"| {name} | " + " | ".join(cells) + " |"


def model_card(settings: FinetuneConfig, state: TrainState, data: dict[str, Any],
               labels: dict[str, Any]) -> str:
    after = state.history[-1]["scores"] if state.history else None
    options = asdict(settings)
    setting_rows = "\n".join(f"| `--{k.replace('_', '-')}` | {options[k]} |" for k in SETTINGS)
    epochs = "\n".join(
        f"| {h['epoch']} | {h['step']} | {h['loss'] if h['loss'] is None else round(h['loss'], 4)} "
        f"| {'-' if h.get('pq') is None else round(100 * h['pq'], 1)} | {h['train_seconds']} |"
        for h in state.history)
    names = ", ".join(f"{i}: {c['name']}" for i, c in enumerate(labels["categories"]))
    return f"""# Fine-tuned by `segpipe finetune`

From `{redact_uri(settings.base_model)}`, on Ray Train ({settings.num_workers} worker(s)).

## Data

- Training data: `{redact_uri(data['train_url'])}`: {data['train_images']} images.
- Held out: {data['val_source']}: {data['val_images']} images.
- Labels (model label index: name): {names}.
- New classes (fresh classifier rows): {', '.join(labels['new']) or 'none'}; dropped from the
  base model: {', '.join(labels['dropped']) or 'none'}. Every other weight starts from the
  base model.

## Settings

| setting | value |
|---|---|
{setting_rows}

{state.step} optimizer steps, {state.epoch} epoch(s), {state.train_seconds / 60:.1f} minutes of
training; resumed from checkpoints at epoch(s): {state.resumed_from_epoch or 'none'}.
Loss: the model's own (Hungarian matching; class, mask and dice losses). Augmentation:
horizontal flips and scale jitter.

## Panoptic quality on the held-out split (x100)

Predictions post-processed as `segpipe annotate` does (threshold 0.5, stuff fused).

| model | PQ | SQ | RQ | PQ things | SQ things | RQ things | PQ stuff | SQ stuff | RQ stuff |
|---|---|---|---|---|---|---|---|---|---|
{_row('before (base model)', state.pq_before)}
{_row('after', after)}

## Epochs

| epoch | step | loss | held-out PQ | training seconds |
|---|---|---|---|---|
{epochs}
"""
