"""The panoptic merge's dense/tiled choice, measured in the worker's own threading: decode on
a pool, preprocess and forward on this thread, post-processing and encoding (PNG, segment
stats, RLE) on a finishing pool beside the next forward, rows added in order, the shard
committed, as `pipeline.shard.process_shard` runs a shard. Both merges give the same output;
only their cost differs. The two run interleaved, in alternating order, on the same images.

    python -m benchmarks.merge_choice [--size 640x480] [--images 96] [--rounds 3] [--threads 2]

Prints one JSON line per round and writes benchmarks/results/merge_choice.json: wall and
process CPU milliseconds an image for each side, and their ratios (tiled over dense).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import emit, write_result
from benchmarks.peers import render_corpus

# Each side's limit on (kept query, target pixel) pairs: every target dense, or every tiled.
SIDES = {"dense": 1 << 62, "tiled": 0}


@contextmanager
def _shard_writer(segmenter: Any, count: int) -> Iterator[Any]:
    from segpipe.core.items import ImageRef, RunContext, Shard
    from segpipe.destination.writer import ShardWriter
    from segpipe.io.storage import Folder, ParallelWrites

    run = RunContext("00001", datetime(2026, 1, 1, tzinfo=timezone.utc), "demo", None, "panoptic")
    refs = tuple(ImageRef(i + 1, f"file:///scene-{i}.jpg") for i in range(count))
    with tempfile.TemporaryDirectory() as tmp:
        dst = Folder(tmp)
        with ParallelWrites(dst, 2) as writes:
            yield ShardWriter(dst, run, Shard("000000", "00001", refs), segmenter.setup().label_set,
                              writes)


def one_shard(segmenter: Any, datas: list[bytes], *, batch: int, threads: int) -> tuple[float, float]:
    """Wall and process CPU seconds for one shard of `datas`, end to end."""
    from segpipe.core.items import ImageRef, Prediction
    from segpipe.pipeline.decode import decode_image

    with _shard_writer(segmenter, len(datas)) as writer, \
            ThreadPoolExecutor(threads) as decoding, ThreadPoolExecutor(threads) as finishing:
        started, cpu = time.perf_counter(), time.process_time()

        def decode(index: int) -> Any:
            return decode_image(ImageRef(index + 1, f"file:///scene-{index}.jpg"), datas[index],
                                max_pixels=10**9)

        def finish(forwarded: list[Any]) -> list[Any]:
            return [writer.encode(p) for p in segmenter.postprocess(forwarded)
                    if isinstance(p, Prediction)]

        pending: list[Future[list[Any]]] = []
        images: list[Any] = []
        for index, image in enumerate(decoding.map(decode, range(len(datas)))):
            images.append(image)
            if len(images) == batch or index == len(datas) - 1:
                pending.append(finishing.submit(finish, segmenter.forward(images)))
                images = []
                while len(pending) > threads + 1:  # bounded, as the worker bounds it
                    for encoded in pending.pop(0).result():
                        writer.add_encoded(encoded)
        for future in pending:
            for encoded in future.result():
                writer.add_encoded(encoded)
        writer.commit()
        return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="decode and finishing threads")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the worker's torch on a 2-core machine
    from segpipe.model.segmenter import Segmenter

    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        datas = [p.read_bytes() for p in render_corpus(Path(tmp), width, height, args.images)]
    segmenter = Segmenter("builtin:demo")
    segmenter.setup()
    for limit in SIDES.values():  # warm-up
        segmenter.dense_max_pairs = limit
        one_shard(segmenter, datas[: 2 * args.batch], batch=args.batch, threads=args.threads)
    per_side: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    rounds = []
    for index in range(args.rounds):
        row: dict[str, Any] = {"round": index + 1}
        order = list(SIDES) if index % 2 == 0 else list(SIDES)[::-1]
        for side in order:
            segmenter.dense_max_pairs = SIDES[side]
            wall, cpu = one_shard(segmenter, datas, batch=args.batch, threads=args.threads)
            per_side[side].append((wall, cpu))
            row[side] = {"wall_ms_per_image": round(wall / len(datas) * 1000, 1),
                         "cpu_ms_per_image": round(cpu / len(datas) * 1000, 1)}
        emit(row)
        rounds.append(row)
    medians = {side: {"wall_ms_per_image": round(statistics.median(w for w, _ in runs) / len(datas) * 1000, 1),
                      "cpu_ms_per_image": round(statistics.median(c for _, c in runs) / len(datas) * 1000, 1)}
               for side, runs in per_side.items()}
    ratios = {key: round(medians["tiled"][key] / medians["dense"][key], 3)
              for key in ("wall_ms_per_image", "cpu_ms_per_image")}
    summary = {"size": args.size, "images": args.images, "threads": args.threads,
               "batch": args.batch, "median": medians, "tiled_over_dense": ratios}
    emit(summary)
    write_result("merge_choice", {**summary, "rounds": rounds})


if __name__ == "__main__":
    main()
