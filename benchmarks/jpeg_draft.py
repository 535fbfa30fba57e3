"""--jpeg-draft against a full decode, through the worker's own shard pipeline
(`pipeline.shard.process_shard`: decode threads, forward, finishing threads, the shard's
files and commit), interleaved in alternating order on the same JPEGs; and how far the
outputs move: per image, the share of pixels whose category differs between the two, and
the images whose segment count differs.

    python -m benchmarks.jpeg_draft [--sizes 640x480 1920x1080] [--images 96 48] [--rounds 4]

Prints one JSON line per size and writes benchmarks/results/jpeg_draft.json: process CPU
and wall milliseconds an image for each side, medians and their ratios (draft over full).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, write_result
from benchmarks.peers import render_corpus

SIDES = {"full": False, "draft": True}


def one_shard(segmenter: Any, src: Path, dst: Path, *, jpeg_draft: bool, threads: int,
              batch: int) -> tuple[float, float, int]:
    """Wall and process CPU seconds for one shard of the JPEGs in `src`, and their count."""
    from segpipe.core.items import RunContext, Shard
    from segpipe.io.storage import Folder
    from segpipe.pipeline.shard import process_shard
    from segpipe.sources import open_source

    source = open_source(str(src))
    refs = tuple(source.list_images())
    run = RunContext("00001", datetime(2026, 1, 1, tzinfo=timezone.utc), "demo", None, "panoptic")
    started, cpu = time.perf_counter(), time.process_time()
    process_shard(Shard("s0", "00001", refs), source=source, segmenter=segmenter,
                  dst=Folder(str(dst)), run=run, batch_size=batch, read_threads=4,
                  cpu_threads=threads, jpeg_draft=jpeg_draft)
    return time.perf_counter() - started, time.process_time() - cpu, len(refs)


def category_maps(dst: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Per image URI, the category of each pixel (0: void) from the segments table's RLEs,
    and the image's segment count."""
    import pyarrow.parquet as pq
    from pycocotools import mask as mask_utils

    maps: dict[str, tuple[np.ndarray, int]] = {}
    for table in sorted((dst / "tables" / "segments").rglob("*.parquet")):
        for row in pq.read_table(table).to_pylist():
            uri = row["image_uri"]
            if uri not in maps:
                maps[uri] = (np.zeros((row["image_height"], row["image_width"]), np.int64), 0)
            categories, count = maps[uri]
            rle = {"size": row["rle"]["size"], "counts": row["rle"]["counts"].encode()}
            categories[mask_utils.decode(rle).astype(bool)] = row["category_id"]
            maps[uri] = (categories, count + 1)
    return maps


def agreement(full: Path, draft: Path) -> dict[str, Any]:
    """How far the drafted outputs are from the full decode's: per image, the share of pixels
    whose category differs; and the images whose segment count differs."""
    a, b = category_maps(full), category_maps(draft)
    empty = (np.zeros((0,), np.int64), 0)
    shares, counts_differ = [], 0
    for uri in sorted(set(a) | set(b)):
        (one, n_one), (other, n_other) = a.get(uri, empty), b.get(uri, empty)
        shares.append(float((one != other).mean()) if one.shape == other.shape else 1.0)
        counts_differ += n_one != n_other
    return {"images": len(shares), "median": round(statistics.median(shares), 5),
            "max": round(max(shares), 5), "segment_count_differs": counts_differ}


def measure(segmenter: Any, size: str, count: int, rounds: int, threads: int,
            batch: int) -> dict[str, Any]:
    width, height = map(int, size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        render_corpus(src, width, height, count)
        one_shard(segmenter, src, Path(tmp) / "warm", jpeg_draft=True, threads=threads,
                  batch=batch)
        runs: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
        for index in range(rounds):
            for side in (list(SIDES) if index % 2 == 0 else list(SIDES)[::-1]):
                dst = Path(tmp) / f"{side}-{index}"
                wall, cpu, images = one_shard(segmenter, src, dst, jpeg_draft=SIDES[side],
                                              threads=threads, batch=batch)
                runs[side].append((wall / images * 1000, cpu / images * 1000))
        moved = agreement(Path(tmp) / "full-0", Path(tmp) / "draft-0")
    medians = {side: {"wall_ms_per_image": round(statistics.median(w for w, _ in r), 1),
                      "cpu_ms_per_image": round(statistics.median(c for _, c in r), 1)}
               for side, r in runs.items()}
    return {"size": size, "images": count, "rounds": rounds, "threads": threads, "batch": batch,
            "median": medians,
            "draft_over_full": {k: round(medians["draft"][k] / medians["full"][k], 3)
                                for k in ("wall_ms_per_image", "cpu_ms_per_image")},
            "cpu_ratio_by_round": [round(d[1] / f[1], 3)
                                   for f, d in zip(runs["full"], runs["draft"], strict=True)],
            "category_pixels_differing": moved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"])
    parser.add_argument("--images", nargs="+", type=int, default=[96, 48])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="decode and finishing threads")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the worker's torch on a 2-core machine
    from segpipe.model.segmenter import Segmenter

    segmenter = Segmenter("builtin:demo")
    segmenter.setup()
    results = []
    for size, count in zip(args.sizes, args.images, strict=True):
        row = measure(segmenter, size, count, args.rounds, args.threads, args.batch)
        emit(row)
        results.append(row)
    write_result("jpeg_draft", {"sizes": results})


if __name__ == "__main__":
    main()
