"""Per-image CPU time of each stage of the annotate path, on one image of each real size, in
this process: decode, preprocess + forward, post-process, panoptic PNG, RLE + segment
stats, Parquet. With --profile, a cProfile of the whole path per size (the top entries).

    python -m benchmarks.stages [--sizes 640x480 1920x1080] [--repeat 8] [--profile]

Prints one JSON line per size and writes benchmarks/results/stages.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import emit, write_result
from benchmarks.peers import render_corpus

# The stages that add up to an image's work: write_and_commit includes the PNG and the RLE.
ONCE_EACH = ("decode", "preprocess_forward", "postprocess", "write_and_commit")


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """CPU seconds per call of `fn` (this process's, all threads): on a shared machine, wall
    time would count the other users' work too."""
    out = fn()  # once to warm up
    started = time.process_time()
    for _ in range(repeat):
        out = fn()
    return (time.process_time() - started) / repeat, out


def stage_times(data: bytes, repeat: int, batch: int) -> dict[str, float]:
    """CPU milliseconds per image of each stage, with `batch` copies of the image per batch,
    torch on one thread (as a worker on a 2-core machine runs it)."""
    import torch

    from segpipe.runtime.allocator import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the worker runs: freed batches stay mapped
    from segpipe.core.items import ImageRef
    from segpipe.formats import coco
    from segpipe.model.segmenter import ForwardedBatch, Segmenter
    from segpipe.pipeline.decode import decode_image

    ref = ImageRef(1, "file:///bench.jpg")
    segmenter = Segmenter("builtin:demo")
    segmenter.setup()
    ms: dict[str, float] = {}
    seconds, decoded = _timed(lambda: decode_image(ref, data, max_pixels=10**9), repeat)
    ms["decode"] = seconds
    images = [decoded] * batch
    seconds, forwarded = _timed(lambda: segmenter.forward(images), repeat)
    ms["preprocess_forward"] = seconds / batch
    ms["forward_only_wall"] = sum(f.forward_s for f in forwarded if isinstance(f, ForwardedBatch)) / batch
    seconds, preds = _timed(lambda: segmenter.postprocess(forwarded), repeat)
    ms["postprocess"] = seconds / batch
    pred = preds[0]
    ms["png"], _ = _timed(lambda: coco.id_map_to_png(pred.id_map), repeat)

    def rle() -> Any:
        coco.segment_stats(pred.id_map)
        return coco.encode_rles(pred.id_map, [s.segment_id for s in pred.segments])

    ms["rle_and_stats"], rles = _timed(rle, repeat)
    ms["write_and_commit"] = _write_seconds(preds, segmenter.setup().label_set, repeat) / batch
    return {k: round(v * 1000, 2) for k, v in ms.items()}


def _write_seconds(preds: list[Any], labels: Any, repeat: int) -> float:
    """Seconds for the shard writer to take a batch's predictions and commit them to a local
    folder: PNGs, segment stats and RLE, Parquet tables, COCO fragment, marker."""
    from datetime import datetime, timezone

    from segpipe.core.items import RunContext, Shard
    from segpipe.destination.writer import ShardWriter
    from segpipe.io.storage import Folder, ParallelWrites
    run = RunContext("00001", datetime(2026, 1, 1, tzinfo=timezone.utc), "demo", None, "panoptic")
    shard = Shard("000000", "00001", tuple(p.image.ref for p in preds))
    with tempfile.TemporaryDirectory() as tmp:
        dst = Folder(tmp)
        started = time.process_time()
        for _ in range(repeat):
            with ParallelWrites(dst, 2) as writes:
                writer = ShardWriter(dst, run, shard, labels, writes)
                for pred in preds:
                    writer.add_prediction(pred)
                writer.commit()
        return (time.process_time() - started) / repeat


def profile_path(data: bytes, batch: int) -> str:
    """The top of a cProfile of decode -> forward -> post-process -> encode, one batch."""
    from segpipe.core.items import ImageRef
    from segpipe.formats import coco
    from segpipe.model.segmenter import Segmenter
    from segpipe.pipeline.decode import decode_image

    segmenter = Segmenter("builtin:demo")
    segmenter.setup()
    profile = cProfile.Profile()
    profile.enable()
    images = [decode_image(ImageRef(i, f"file:///{i}.jpg"), data, max_pixels=10**9)
              for i in range(batch)]
    for pred in segmenter(images):  # type: ignore[arg-type]
        coco.id_map_to_png(pred.id_map)
        coco.segment_stats(pred.id_map)
        coco.encode_rles(pred.id_map, [s.segment_id for s in pred.segments])
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs()  # file names without this machine's folders
    stats.sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080"])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(render_corpus(Path(tmp), width, height, 1)[0]).read_bytes()
        row: dict[str, Any] = {"size": size, "cpu_ms_per_image": stage_times(data, args.repeat, args.batch)}
        ms = row["cpu_ms_per_image"]
        ms["total"] = round(sum(ms[k] for k in ONCE_EACH), 2)
        emit(row)
        if args.profile:
            row["profile"] = profile_path(data, args.batch)
            print(row["profile"], flush=True)
        results.append(row)
    write_result("stages", {"results": results})


if __name__ == "__main__":
    main()
