"""The review loop pays off: fine-tuning builtin:demo on a domain it has never seen.

    python -m benchmarks.finetune [--train 300] [--held-out 100] [--max-minutes 9]

The new domain ("dusk"): the synthetic scenes of `segpipe.demo.synth` taken in poor light,
as a camera at dusk would: 40% of the light and sensor noise (Gaussian, sigma 6 of 255,
per pixel and channel). Shapes, layouts and hues are the demo model's; brightness,
contrast and noise are not (its scenes are bright, with noise of sigma 3), and it never
saw a dark scene: sky, water and ground, whose textures it tells apart by brightness,
blur into each other. "Reviewed" scenes of that domain (their ground truth) are the
training data; held-out scenes of it (another seed) measure PQ before and after; held-out
scenes of the original domain (seed 999, as the demo model's own card) show what was kept.

Writes benchmarks/results/finetune.json; target: held-out PQ on the new domain >= 0.80
within 10 minutes of fine-tuning on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import emit, write_result  # noqa: E402
from segpipe.demo.synth import CATEGORIES, make_scene, png_bytes, scene_name  # noqa: E402
from segpipe.formats import coco  # noqa: E402
from segpipe.io.storage import Folder  # noqa: E402

TRAIN_SEED, HELD_OUT_SEED, ORIGINAL_SEED = 21, 998, 999
TARGET_PQ = 0.80
EPOCH_VAL = 30
LIGHT, NOISE = 0.4, 6.0


def at_dusk(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dark = image.astype(np.float32) * LIGHT + rng.normal(0.0, NOISE, image.shape)
    return np.clip(dark, 0, 255).astype(np.uint8)


def write_domain(out: str, count: int, seed: int, *, dusk: bool) -> str:
    """`count` scenes of `seed` as a COCO-panoptic folder, at dusk or as they are."""
    folder = Folder(out)
    if folder.exists("panoptic.json"):  # rendered by an earlier run with --work
        return out
    rng = np.random.default_rng([seed, 7])
    images, annotations = [], []
    for index in range(count):
        scene = make_scene(seed, index)
        name = scene_name(seed, index)
        pixels = at_dusk(scene.image, rng) if dusk else scene.image
        folder.write_bytes(f"images/{name}", png_bytes(pixels))
        folder.write_bytes(f"panoptic/{name}", coco.id_map_to_png(scene.ids))
        height, width = scene.ids.shape
        images.append({"id": index, "file_name": name, "width": width, "height": height})
        annotations.append({"image_id": index, "file_name": name, "segments_info": scene.segments})
    folder.write_json("panoptic.json", {"images": images, "annotations": annotations,
                                        "categories": CATEGORIES})
    return out


def pq_of(model_dir: str, data: str) -> dict[str, float]:
    """Held-out PQ of a model folder, with the post-processing `annotate` uses."""
    from segpipe.model.loading import load_model
    from segpipe.train.dataset import read_dataset
    from segpipe.train.labels import plan_labels
    from segpipe.train.metrics import held_out_pq, read_held_out

    loaded = load_model(model_dir, device="cpu")
    dataset = read_dataset(data)
    plan = plan_labels(dataset.categories, loaded.label_set, loaded.model.config.num_labels)
    assert plan.unchanged, "the benchmark keeps the demo model's label set"
    result = held_out_pq(loaded.model, loaded.processor, read_held_out(dataset.examples), plan,
                         family=loaded.family, device=loaded.device, batch_size=16)
    return {g: round(result[g]["pq"], 4) for g in ("All", "Things", "Stuff")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--max-minutes", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--work", default=None, help="folder for the scenes and the model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from segpipe.train.config import FinetuneConfig
    from segpipe.train.run import finetune

    work = args.work or tempfile.mkdtemp(prefix="finetune-bench-")
    load_before = os.getloadavg()
    started = time.monotonic()
    train = write_domain(f"{work}/train", args.train, TRAIN_SEED, dusk=True)
    held_out = write_domain(f"{work}/held-out", args.held_out, HELD_OUT_SEED, dusk=True)
    # Each epoch's PQ, for the history, on the first scenes of the held-out seed (cheaper).
    per_epoch = write_domain(f"{work}/per-epoch", EPOCH_VAL, HELD_OUT_SEED, dusk=True)
    original = write_domain(f"{work}/original", args.held_out, ORIGINAL_SEED, dusk=False)
    render_s = time.monotonic() - started
    before = {"new_domain": pq_of("builtin:demo", held_out),
              "original_domain": pq_of("builtin:demo", original)}
    emit({"stage": "before", **before})
    settings = FinetuneConfig(
        train=train, base_model="builtin:demo", out=f"{work}/model", val=per_epoch,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        max_minutes=args.max_minutes, cpus_per_worker=2, threads_per_worker=2, progress=False)
    tuned_at = time.monotonic()
    summary = finetune(settings)
    finetune_s = time.monotonic() - tuned_at
    after = {"new_domain": pq_of(f"{work}/model", held_out),
             "original_domain": pq_of(f"{work}/model", original)}
    emit({"stage": "after", **after})
    payload: dict[str, Any] = {
        "domain": f"synthetic scenes at dusk: {LIGHT:.0%} of the light, sensor noise sigma {NOISE}",
        "train_images": args.train, "held_out_images": args.held_out,
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "max_minutes": args.max_minutes, "workers": 1, "threads": 2},
        "pq_before": before, "pq_after": after, "target_pq": TARGET_PQ,
        "met": after["new_domain"]["All"] >= TARGET_PQ,
        "train_seconds": summary["train_seconds"], "finetune_wall_seconds": round(finetune_s, 1),
        "render_seconds": round(render_s, 1), "steps": summary["steps"],
        "epochs_done": summary["epochs"], "history": summary["history"],
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cores": os.cpu_count(),
    }
    path = write_result("finetune", payload)
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
