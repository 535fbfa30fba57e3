"""segpipe against its peers on real-size images, in one run, on the same images, model and
thresholds:

1. `segpipe annotate` (local files in, local files out); `segpipe-draft`, an extra contender
   to name, is the same command with `--jpeg-draft` (JPEGs decoded at a reduced scale);
2. the transformers `pipeline("image-segmentation")` in a loop, one image at a time;
3. a Ray Data job as the Ray docs teach it: `read_binary_files` -> `map_batches` (an actor
   with the image processor, the model, `post_process_panoptic_segmentation`, a PNG and COCO
   RLE per segment) -> `write_parquet`.

Corpora: synthetic scenes (`segpipe.demo.synth`) rendered at 640x480 and 1920x1080, with a
photograph-like grain, saved as JPEG quality 90; every image is distinct.

    python -m benchmarks.peers [--quick] [--corpora 640x480:400,640x480:2000,1920x1080:200]
        [--contenders segpipe,segpipe-draft,loop,raydata] [--cpus-per-worker 1 2] [--rounds 1]

Prints one JSON line per contender and corpus (wall, steady ms per image, fixed cost, CPU
seconds per image) and one line of ratios per corpus; writes benchmarks/results/peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    RESULTS_DIR,
    emit,
    machine_busy_seconds,
    run_annotate,
    write_result,
)

FULL_CORPORA = "640x480:400,640x480:2000,1920x1080:200"
QUICK_CORPORA = "640x480:40,1920x1080:16"
BATCH = 8
THRESHOLD, MASK_THRESHOLD, OVERLAP = 0.5, 0.5, 0.8  # transformers' and segpipe's defaults
SEGPIPES = {"segpipe": (), "segpipe-draft": ("--jpeg-draft",)}  # contender: extra flags


def render_corpus(folder: Path, width: int, height: int, count: int, seed: int = 17) -> list[Path]:
    """`count` distinct JPEGs of `width`x`height`, rendered once and kept in `folder`."""
    import numpy as np
    from PIL import Image

    from segpipe.demo.synth import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene-{index:06d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        scene = make_scene(seed, index)
        big = Image.fromarray(scene.image).resize((width, height), Image.Resampling.BICUBIC)
        # Grain, as a camera sensor gives: without it an upscaled scene is smooth, and its
        # JPEG decodes faster than a photograph's would.
        rng = np.random.default_rng([seed, index])
        grain = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
        pixels = np.clip(np.asarray(big, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        tmp = path.with_suffix(".part")
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)
        tmp.rename(path)
    return paths


# ---- contenders, each in a process of its own ----------------------------------------------

def loop_contender(images: list[str], model_dir: str) -> dict[str, Any]:
    """The plain way: a transformers pipeline, one image at a time."""
    from PIL import Image
    from transformers import pipeline

    started = time.perf_counter()
    segment = pipeline("image-segmentation", model=model_dir, device="cpu")
    loaded = time.perf_counter()
    first = None
    for path in images:
        segment(Image.open(path).convert("RGB"), subtask="panoptic", threshold=THRESHOLD,
                mask_threshold=MASK_THRESHOLD, overlap_mask_area_threshold=OVERLAP)
        first = first or time.perf_counter()
    ended = time.perf_counter()
    # Steady: the loop after its first image (the first pays for lazy set-up).
    steady = (ended - first) / max(1, len(images) - 1) if first else 0.0
    return {"load_s": loaded - started, "steady_s_per_image": steady}


class RayDataSegmenter:
    """The map_batches actor of the Ray Data job: processor, model and post-processing."""

    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        torch.set_num_threads(1)
        self.processor = AutoImageProcessor.from_pretrained(model_dir)
        self.model = AutoModelForUniversalSegmentation.from_pretrained(model_dir).eval()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import io

        import numpy as np
        import torch
        from PIL import Image
        from pycocotools import mask as mask_utils

        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch["bytes"]]
        inputs = self.processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            outputs = self.model(**inputs)
        results = self.processor.post_process_panoptic_segmentation(
            outputs, threshold=THRESHOLD, mask_threshold=MASK_THRESHOLD,
            overlap_mask_area_threshold=OVERLAP,
            target_sizes=[(im.height, im.width) for im in images])
        pngs, rles = [], []
        for result in results:
            ids = result["segmentation"].numpy().astype(np.uint32)
            rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            pngs.append(buf.getvalue())
            rles.append(json.dumps([
                mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))["counts"]
                .decode() for s in result["segments_info"]]))
        return {"path": batch["path"], "png": pngs, "rle": rles,
                "done_at": [time.time()] * len(images)}


def raydata_contender(images: list[str], model_dir: str, out: str) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import ray

    cpus = psutil.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # The actor declares one CPU, so the read tasks keep the others; declaring all CPUs on
    # the actor would leave none for the reads, and the job would wait forever.
    ds = ray.data.read_binary_files(images, include_paths=True)
    ds = ds.map_batches(RayDataSegmenter, fn_constructor_args=(model_dir,), batch_size=BATCH,
                        num_cpus=1, concurrency=1)
    ds.write_parquet(out)
    done = sorted(t for f in Path(out).glob("*.parquet")
                  for t in pq.read_table(f, columns=["done_at"]).column("done_at").to_pylist())
    ray.shutdown()
    # Steady: between the first and the last batch out of the actor.
    steady = (done[-1] - done[0]) / max(1, len(done) - BATCH) if len(done) > BATCH else 0.0
    return {"rows": len(done), "steady_s_per_image": steady}


def run_contender(name: str, images: list[str], model_dir: str) -> tuple[float, dict[str, Any]]:
    """`name` in a fresh process; its wall seconds and what it measured."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "images.json"
        listing.write_text(json.dumps(images))
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--contender", name,
                               str(listing), model_dir, str(Path(tmp) / "out")],
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "RAY_ADDRESS": ""})
        wall = time.perf_counter() - started
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


# ---- one corpus ---------------------------------------------------------------------------

def measure(name: str, corpus: Path, images: list[str], model: str, model_dir: str,
            cpus_per_worker: float) -> dict[str, Any]:
    count = len(images)
    busy0, load0 = machine_busy_seconds(), os.getloadavg()[0]
    if name in SEGPIPES:
        with tempfile.TemporaryDirectory() as tmp:
            wall, summary = run_annotate(str(corpus), str(Path(tmp) / "dst"), "--model", model,
                                         "--batch-size", str(BATCH), "--shard-size", "100",
                                         "--cpus-per-worker", f"{cpus_per_worker:g}",
                                         *SEGPIPES[name])
        assert summary["images"] == count and summary["errors"] == 0, summary
        steady = summary["worker_busy_s"] / count
        fixed = wall - summary["worker_busy_s"]
        extra: dict[str, Any] = {"phases": summary.get("phases"),
                                 "cpus_per_worker": cpus_per_worker}
    else:
        wall, got = run_contender(name, images, model_dir)
        steady = got["steady_s_per_image"]
        fixed = wall - steady * count
        extra = {"load_s": round(got["load_s"], 2)} if "load_s" in got else {}
    cpu = machine_busy_seconds() - busy0
    return {"contender": name, "images": count, "wall_s": round(wall, 2),
            "steady_ms_per_image": round(steady * 1000, 1), "fixed_s": round(fixed, 2),
            # The whole machine's busy CPU over the run: on a shared machine, others' work too.
            "machine_cpu_s_per_image": round(cpu / count, 4),
            "load_avg_1m_before": round(load0, 2), **extra}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A contender's round with the median wall time, with every round's wall beside it: a
    process's speed varies from one start to the next (the loop's most of all), so a single
    round can flatter or wrong any contender."""
    ordered = sorted(rows, key=lambda x: x["wall_s"])
    middle = {k: v for k, v in ordered[(len(ordered) - 1) // 2].items() if k != "round"}
    return {**middle, "walls_s": [x["wall_s"] for x in rows]} if len(rows) > 1 else middle


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each peer's time over each segpipe contender's (its row with the most CPUs)."""
    most = max((x.get("cpus_per_worker", 0) for x in rows), default=0)
    by = {r["contender"]: r for r in rows
          if r["contender"] not in SEGPIPES or r.get("cpus_per_worker") == most}
    out: dict[str, Any] = {}
    for ours in (n for n in SEGPIPES if n in by):
        suffix = ours.replace("-", "_")
        for peer in ("loop", "raydata"):
            if peer in by:
                out[f"wall_{peer}_over_{suffix}"] = round(by[peer]["wall_s"] / by[ours]["wall_s"], 2)
                out[f"steady_{peer}_over_{suffix}"] = round(
                    by[peer]["steady_ms_per_image"] / by[ours]["steady_ms_per_image"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help=f"corpora {QUICK_CORPORA}")
    parser.add_argument("--corpora", help=f"WxH:COUNT,... (default {FULL_CORPORA})")
    parser.add_argument("--contenders", default="segpipe,loop,raydata")
    parser.add_argument("--cpus-per-worker", type=float, nargs="+", default=[1.0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of every contender per corpus, in alternating order; each "
                        "contender's row is its median-wall round")
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "segpipe-peers"),
                        help="where the rendered corpora are kept between runs")
    parser.add_argument("--contender", nargs=4, metavar=("NAME", "IMAGES", "MODEL_DIR", "OUT"),
                        help=argparse.SUPPRESS)  # one contender, in its own process
    args = parser.parse_args()
    if args.contender:
        name, listing, model_dir, out = args.contender
        images = json.loads(Path(listing).read_text())
        fn = loop_contender if name == "loop" else lambda i, m: raydata_contender(i, m, out)
        print(json.dumps(fn(images, model_dir)), flush=True)
        return
    from segpipe.model.loading import resolve_location

    model_dir = resolve_location(args.model, None)
    results = []
    for spec in (args.corpora or (QUICK_CORPORA if args.quick else FULL_CORPORA)).split(","):
        size, count = spec.split(":")
        width, height = map(int, size.split("x"))
        corpus = Path(args.cache) / f"{width}x{height}-{count}"
        images = [str(p) for p in render_corpus(corpus, width, height, int(count))]
        runs = [(name, cpus) for name in args.contenders.split(",")
                for cpus in (args.cpus_per_worker if name in SEGPIPES else [None])]
        rounds: dict[tuple[str, float | None], list[dict[str, Any]]] = {run: [] for run in runs}
        for r in range(args.rounds):
            for name, cpus in (runs if r % 2 == 0 else runs[::-1]):  # alternating order
                row = {"corpus": size, "round": r,
                       **measure(name, corpus, images, args.model, model_dir, cpus or 1.0)}
                emit(row)
                rounds[(name, cpus)].append(row)
        rows = [median_row(rounds[run]) for run in runs]
        summary = {"corpus": size, "images": int(count), "rounds": args.rounds,
                   "ratios": ratios(rows),
                   "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
        emit(summary)
        results.append({**summary, "rows": rows})
    name = "peers_quick" if args.quick else "peers"
    # Corpora not run this time keep their earlier figures (each row says its load).
    previous = json.loads(path.read_text()).get("results", []) if (
        path := RESULTS_DIR / f"{name}.json").exists() else []
    ran = {(r["corpus"], r["images"]) for r in results}
    results = [r for r in previous if (r["corpus"], r["images"]) not in ran] + results
    results.sort(key=lambda r: (r["corpus"] != "640x480", r["images"]))  # the order
    write_result(name, {
        "cores": psutil.cpu_count(), "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "target": {"wall_ratio_min": {"640x480:400": 2.5, "640x480:2000": 4, "1920x1080:200": 4},
                   "fixed_s_max": 10, "steady_ms_640x480_max": 25}})


if __name__ == "__main__":
    main()
