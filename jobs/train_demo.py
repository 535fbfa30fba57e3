"""Train the bundled demo model: a small Mask2Former on synthetic scenes, on the CPU.

    python jobs/train_demo.py [--out segpipe/builtin/demo] [--minutes 13]

Training scenes come from `segpipe.demo.synth` with TRAIN_SEEDS only; seed 999 is held out
for evaluation and never trained on. Training stops at a wall-clock limit (the CPU may
be shared), then the job measures PQ on 200 held-out scenes and writes the model,
its processor, labels.json and MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

# Before torch loads OpenMP: with the default spin-waiting, two threads on a CPU that other
# work shares were 10x slower per step than one thread (each spins at every barrier
# while the other is descheduled); with passive waiting they were as fast as one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Running this file puts jobs/ on sys.path, so the sibling evaluation script imports.
from eval_demo import HELD_OUT_COUNT, HELD_OUT_SEED, SCORE_THRESHOLD, measure
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    SwinConfig,
)

from segpipe.demo.synth import CATEGORIES, make_scene

TRAIN_SEEDS = (1, 2, 3, 4)
SIZE = 128
assert HELD_OUT_SEED not in TRAIN_SEEDS


@dataclass(frozen=True)
class Hyper:
    """What a training run is made of; all of it goes into the model card."""

    minutes: float = 13.0
    scenes_per_seed: int = 500
    max_steps: int = 0  # 0: run until the time limit
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 50
    embed_dim: int = 24
    hidden_dim: int = 64
    num_queries: int = 16
    decoder_layers: int = 3
    seed: int = 0


def build_model(hyper: Hyper) -> Mask2FormerForUniversalSegmentation:
    """A Mask2Former with a tiny Swin backbone; label index i is CATEGORIES[i]."""
    e = hyper.embed_dim
    backbone = SwinConfig(
        image_size=SIZE, patch_size=4, embed_dim=e, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
        window_size=4,  # divides every stage's feature map at 128x128
        drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    d = hyper.hidden_dim
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=d, mask_feature_size=d, hidden_dim=d,
        encoder_feedforward_dim=2 * d, encoder_layers=2, decoder_layers=hyper.decoder_layers,
        num_attention_heads=4, dim_feedforward=2 * d, num_queries=hyper.num_queries,
        num_labels=len(CATEGORIES),
        id2label={i: c["name"] for i, c in enumerate(CATEGORIES)},
        label2id={c["name"]: i for i, c in enumerate(CATEGORIES)},
        # Mask logits are 32x32 at this input size: 512 sampled points per mask (12544 by
        # default) are still half a point per logit, and the loss costs far less.
        train_num_points=512,
    )
    return Mask2FormerForUniversalSegmentation(config)


def build_processor() -> Mask2FormerImageProcessor:
    return Mask2FormerImageProcessor(
        do_resize=True, size={"height": SIZE, "width": SIZE}, size_divisor=0,
        ignore_index=255, do_reduce_labels=False,
    )


@dataclass
class Pool:
    """Preprocessed training scenes: normalized pixels, id maps and segment classes."""

    pixels: torch.Tensor  # (N, 3, SIZE, SIZE) float16
    ids: torch.Tensor  # (N, SIZE, SIZE) uint8, segment ids
    classes: list[torch.Tensor]  # per scene: label index of segment id k at [k]


def build_pool(processor: Mask2FormerImageProcessor, per_seed: int, chunk: int = 64) -> Pool:
    """Render and preprocess every training scene once; epochs then cost no rendering."""
    label_of = {c["id"]: i for i, c in enumerate(CATEGORIES)}
    refs = [(seed, i) for seed in TRAIN_SEEDS for i in range(per_seed)]
    pixels, ids, classes = [], [], []
    for start in range(0, len(refs), chunk):
        scenes = [make_scene(seed, i) for seed, i in refs[start : start + chunk]]
        batch = processor(images=[s.image for s in scenes], return_tensors="pt")
        pixels.append(batch["pixel_values"].half())
        for scene in scenes:
            # nearest-exact is what the processor uses for segmentation maps
            id_map = torch.from_numpy(scene.ids)[None, None].float()
            small = torch.nn.functional.interpolate(id_map, size=(SIZE, SIZE), mode="nearest-exact")
            ids.append(small[0, 0].to(torch.uint8))
            table = torch.full((len(scene.segments) + 1,), -1, dtype=torch.long)
            for s in scene.segments:
                table[s["id"]] = label_of[s["category_id"]]
            classes.append(table)
    return Pool(torch.cat(pixels), torch.stack(ids), classes)


def make_batch(pool: Pool, indices: list[int], rng: random.Random):
    """pixel_values, mask_labels and class_labels, with random horizontal flips."""
    pixels, masks, labels = [], [], []
    for index in indices:
        image, ids = pool.pixels[index].float(), pool.ids[index].long()
        if rng.random() < 0.5:
            image, ids = image.flip(-1), ids.flip(-1)
        present = torch.unique(ids)
        present = present[present > 0]  # a tiny segment can vanish in the resize
        pixels.append(image)
        masks.append((ids[None] == present[:, None, None]).float())
        labels.append(pool.classes[index][present])
    return torch.stack(pixels), masks, labels


def learning_rate(hyper: Hyper, step: int, progress: float) -> float:
    """Linear warmup, then cosine decay over the run's progress (time or steps)."""
    warm = min(1.0, (step + 1) / hyper.warmup_steps)
    return hyper.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(model, pool: Pool, hyper: Hyper, device: str) -> dict:
    """Train until the time limit (or max_steps); returns what the card reports."""
    rng = random.Random(hyper.seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=hyper.lr, weight_decay=0.05)
    budget = hyper.minutes * 60
    start = time.monotonic()
    step, running = 0, []
    order: list[int] = []
    while True:
        elapsed = time.monotonic() - start
        progress = step / hyper.max_steps if hyper.max_steps else elapsed / budget
        if progress >= 1.0:
            break
        if len(order) < hyper.batch_size:
            order = list(range(len(pool.ids)))
            rng.shuffle(order)
        indices, order = order[: hyper.batch_size], order[hyper.batch_size :]
        pixels, masks, labels = make_batch(pool, indices, rng)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(hyper, step, progress)
        loss = model(
            pixel_values=pixels.to(device), mask_labels=[m.to(device) for m in masks],
            class_labels=[c.to(device) for c in labels],
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  loss {np.mean(running):7.3f}  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}", flush=True)
            running = []
    return {"steps": step, "train_seconds": time.monotonic() - start}


def save(model, processor, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    labels = [{k: c[k] for k in ("id", "name", "isthing", "color")} for c in CATEGORIES]
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="segpipe/builtin/demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    for name, default in vars(Hyper()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args()
    hyper = Hyper(**{k: getattr(args, k) for k in vars(Hyper())})
    torch.set_num_threads(args.threads)
    torch.manual_seed(hyper.seed)

    job_start = time.monotonic()
    processor = build_processor()
    pool = build_pool(processor, hyper.scenes_per_seed)
    pool_seconds = time.monotonic() - job_start
    print(f"{len(pool.ids)} training scenes ready in {pool_seconds:.0f} s", flush=True)
    model = build_model(hyper)
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters", flush=True)
    facts = train(model, pool, hyper, args.device)
    out = Path(args.out)
    save(model, processor, out)
    result = measure(out)
    blocks = len(model.model.transformer_module.decoder.layers)
    device = "the CPU" if args.device == "cpu" else args.device
    facts |= {"params": params, "decoder_blocks": blocks, "pool_seconds": pool_seconds,
              "device": device, "threads": args.threads,
              "job_seconds": time.monotonic() - job_start}
    write_card(out, hyper, facts, result)
    print(json.dumps({"facts": facts, "All": result["All"], "Things": result["Things"],
                      "Stuff": result["Stuff"]}, indent=2))


def write_card(out: Path, hyper: Hyper, facts: dict, result: dict) -> None:
    """MODEL_CARD.md from this run's own figures."""
    size_mb = (out / "model.safetensors").stat().st_size / 1e6
    rows = "\n".join(
        f"| {group} | {100 * result[group]['pq']:.1f} | {100 * result[group]['sq']:.1f} "
        f"| {100 * result[group]['rq']:.1f} | {result[group]['n']} |"
        for group in ("All", "Things", "Stuff")
    )
    per_category = "\n".join(
        f"| {c['name']} | {'thing' if c['isthing'] else 'stuff'} | {100 * c['pq']:.1f} "
        f"| {100 * c['sq']:.1f} | {100 * c['rq']:.1f} | {c['tp']} | {c['fp']} | {c['fn']} |"
        for c in result["per_category"]
    )
    names = ", ".join(f"{i}: {c['name']}" for i, c in enumerate(CATEGORIES))
    text = CARD.format(
        params=facts["params"], size_mb=size_mb, names=names,
        seeds=", ".join(map(str, TRAIN_SEEDS)),
        per_seed=hyper.scenes_per_seed, total=hyper.scenes_per_seed * len(TRAIN_SEEDS), size=SIZE,
        held_out=HELD_OUT_SEED, held_out_count=HELD_OUT_COUNT, rows=rows,
        per_category=per_category, train_min=facts["train_seconds"] / 60,
        pool_s=facts["pool_seconds"], job_min=facts["job_seconds"] / 60, device=facts["device"],
        threads=facts["threads"], steps=facts["steps"], h=hyper, blocks=facts["decoder_blocks"],
        images=result["images"]["evaluated"], threshold=SCORE_THRESHOLD,
    )
    (out / "MODEL_CARD.md").write_text(text)


CARD = """\
# segpipe demo model

A small Mask2Former (panoptic) trained by segpipe on synthetic scenes, bundled so that
the pipeline, the exporters and `segpipe eval` can be exercised offline with a model
that gives meaningful output. It knows nothing but the synthetic scenes of
`segpipe.demo.synth`; it is not meant for real photographs.

## Model

- `Mask2FormerForUniversalSegmentation` (transformers), randomly initialized and trained
  from scratch; {params:,} parameters; `model.safetensors` is {size_mb:.1f} MB.
- Backbone: Swin, embed dim {h.embed_dim}, depths [1, 1, 2, 1], heads [1, 2, 4, 8],
  window 4, patch 4. Pixel decoder: 2 deformable-attention layers, width {h.hidden_dim}.
  Transformer decoder: `decoder_layers={h.decoder_layers}`, that is {blocks} masked-attention
  layers, width {h.hidden_dim}, {h.num_queries} queries.
- Input: resized to {size}x{size} by the bundled `Mask2FormerImageProcessor`
  (ImageNet mean/std). Post-process with `post_process_panoptic_segmentation`,
  fusing the stuff labels.
- Labels (model label index: name):
  {names}.
  `labels.json` gives each index's COCO category (id, name, isthing, color) in the same order.

## Data

`segpipe.demo.synth.make_scene`: textured stuff bands (sky, ground, water) under 2 to 5
flat-colored shapes (circle, square, triangle, star, ellipse), each class in its own hue
family; shapes of different classes overlap (each stays at least 60% visible), shapes of
one class never touch; image sides 96 to 192 px, aspect ratio at most 1.33.
Training used seeds {seeds}, {per_seed} scenes each ({total} scenes, rendered once),
with random horizontal flips.
Seed {held_out} is held out for evaluation and was never trained on.

## Training

`python jobs/train_demo.py` on {device} ({threads} threads): AdamW, lr {h.lr:g}
with {h.warmup_steps} warmup steps and cosine decay over a {h.minutes:g}-minute wall-clock
budget, weight decay 0.05, gradient clipping at 1.0, batch {h.batch_size}, the model's own
loss (Hungarian matching, class + mask + dice, auxiliary losses). {steps} steps in
{train_min:.1f} minutes of training; rendering the scenes took {pool_s:.0f} s; the whole
job, evaluation included, {job_min:.1f} minutes. The budget is wall-clock time, so a run on
a busy machine takes fewer steps and scores lower.

## Quality

Measured by the job on {held_out_count} held-out scenes of seed {held_out} ({images}
evaluated) with `segpipe.tools.evaluate` (COCO panoptic quality; x100), predictions from
`post_process_panoptic_segmentation` with threshold {threshold}, stuff labels fused:

| | PQ | SQ | RQ | categories |
|---|---|---|---|---|
{rows}

| category | kind | PQ | SQ | RQ | TP | FP | FN |
|---|---|---|---|---|---|---|---|
{per_category}

Reproduce the figures with `python jobs/eval_demo.py`.
"""


if __name__ == "__main__":
    main()
