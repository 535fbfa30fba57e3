"""End-to-end evidence on this machine, in one run:

1. `segpipe annotate` S3 -> S3 against a plain baseline (the transformers
   `pipeline("image-segmentation")` in a loop over the same images read from the same S3
   prefix), both with the same model: images/s and their ratio (target >= 3).
2. The share of the workers' shard time spent outside the model's forward, batch 8
   (target <= 25%).
3. Driver and worker peak memory, 10,000 images against 1,000 (target <= 1.2x).

    python -m benchmarks.e2e [--images 2000] [--model builtin:demo] [--skip-memory]

Prints one JSON object per line and writes benchmarks/results/e2e_*.json.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from benchmarks.common import (
    S3Endpoint,
    emit,
    local_s3,
    machine_busy_seconds,
    run_annotate,
    write_result,
)


def baseline_pipeline(model_dir: str, uris: list[str]) -> tuple[float, float]:
    """The plain way: a transformers pipeline, one image at a time, read from S3. Returns
    the seconds to load the model and the seconds of the loop."""
    from transformers import pipeline

    from segpipe.io.storage import filesystem

    started = time.perf_counter()
    segment = pipeline("image-segmentation", model=model_dir, device="cpu")
    fs, _ = filesystem(uris[0])
    loaded = time.perf_counter()
    for uri in uris:
        image = Image.open(io.BytesIO(fs.cat_file(uri.removeprefix("s3://")))).convert("RGB")
        segment(image, subtask="panoptic")
    return loaded - started, time.perf_counter() - loaded


class CpuMeter:
    """CPU seconds spent, during a `with` block, by the whole machine and by the S3 server."""

    def __init__(self, s3: S3Endpoint) -> None:
        self.s3 = s3
        self.machine = self.server = 0.0

    def __enter__(self) -> CpuMeter:
        self._machine, self._server = machine_busy_seconds(), self.s3.cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.machine = machine_busy_seconds() - self._machine
        self.server = self.s3.cpu_seconds() - self._server


def throughput_case(model: str, count: int, batch_size: int) -> None:
    from segpipe.demo.synth import write_scenes
    from segpipe.io.storage import filesystem
    from segpipe.model.loading import resolve_location

    with local_s3() as s3:
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        write_scenes("s3://bench/scenes", count, seed=4242)
        fs, _ = filesystem("s3://bench")
        uris = sorted(f"s3://{p}" for p in fs.find("bench/scenes/images"))
        with CpuMeter(s3) as base_cpu:
            load_s, loop_s = baseline_pipeline(resolve_location(model, None), uris)
        with CpuMeter(s3) as ours_cpu:
            ours_s, summary = run_annotate(
                "s3://bench/scenes/images/", "s3://bench/prelabels", "--model", model,
                "--batch-size", str(batch_size), "--shard-size", "100")
    assert summary["images"] == count and summary["errors"] == 0, summary
    base_s = load_s + loop_s
    busy = summary["worker_busy_s"]

    def per_image_ms(seconds: float) -> float:
        return round(seconds / count * 1000, 1)

    row = {"case": "annotate_vs_pipeline", "model": model, "images": count,
           "batch_size": batch_size, "cores": psutil.cpu_count(),
           # End to end: the baseline's model load and loop; segpipe's whole command, from
           # process start (imports, Ray start, worker start and model load) to exit.
           "baseline_s": round(base_s, 2), "segpipe_s": round(ours_s, 2),
           "baseline_images_per_s": round(count / base_s, 2),
           "segpipe_images_per_s": round(count / ours_s, 2), "ratio": round(base_s / ours_s, 2),
           # Per image once running: the baseline's loop; segpipe's worker busy with shards.
           "steady_baseline_ms_per_image": per_image_ms(loop_s),
           "steady_segpipe_ms_per_image": per_image_ms(busy),
           "steady_ratio": round(loop_s / busy, 2),
           "segpipe_fixed_s": round(ours_s - busy, 2),
           # CPU spent per image by the whole machine, and by the S3 server within it.
           "baseline_cpu_ms_per_image": per_image_ms(base_cpu.machine),
           "segpipe_cpu_ms_per_image": per_image_ms(ours_cpu.machine),
           "baseline_s3_server_cpu_ms_per_image": per_image_ms(base_cpu.server),
           "segpipe_s3_server_cpu_ms_per_image": per_image_ms(ours_cpu.server)}
    emit(row)
    write_result("e2e_throughput", {"results": [row], "target": {"ratio_min": 3}})
    outside = 1 - summary["worker_forward_s"] / busy
    frac = {"case": "outside_forward", "model": model, "batch_size": batch_size,
            "images": count, "worker_forward_s": summary["worker_forward_s"],
            "worker_busy_s": busy, "outside_forward_fraction": round(outside, 4)}
    emit(frac)
    write_result("e2e_outside_forward", {"results": [frac],
                                         "target": {"outside_forward_fraction_max": 0.25}})


def memory_case(model: str, small: int, large: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        src = Path(tmp) / "src"
        src.mkdir()
        for i in range(large):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                src / f"{i:06d}.png", compress_level=1)
        for count in (small, large):
            files = sorted(src.iterdir())
            sub = Path(tmp) / f"src-{count}"
            sub.mkdir()
            for f in files[:count]:
                (sub / f.name).symlink_to(f)
            wall, summary = run_annotate(str(sub), str(Path(tmp) / f"dst-{count}"), "--model",
                                         model, "--batch-size", "8", "--shard-size", "100")
            row = {"case": f"memory_{count}", "images": count, "seconds": round(wall, 1),
                   "driver_peak_rss_mb": summary["driver_peak_rss_mb"],
                   "worker_peak_rss_mb": summary["worker_peak_rss_mb"]}
            emit(row)
            rows.append(row)
    ratios = {k: round(rows[1][k] / rows[0][k], 3) for k in ("driver_peak_rss_mb", "worker_peak_rss_mb")}
    emit({"case": "memory_ratio", **ratios})
    write_result("e2e_memory", {"results": rows, "ratio_large_over_small": ratios,
                                "target": {"max_ratio": 1.2}})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-small", type=int, default=1000)
    parser.add_argument("--memory-large", type=int, default=10000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_throughput:
        throughput_case(args.model, args.images, args.batch_size)
    if not args.skip_memory:
        memory_case(args.model, args.memory_small, args.memory_large)


if __name__ == "__main__":
    main()
