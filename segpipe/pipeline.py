"""One shard, start to finish: read -> decode -> batch -> segment -> write -> commit.

Knows nothing of Ray. Reading and decoding run on a background thread a bounded
number of images ahead, so they overlap with the model's work on the current batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from segpipe.decode import decode_image
from segpipe.records import DecodedImage, ImageFailure, Prediction, Shard
from segpipe.segmenter import Segmenter
from segpipe.sources import Source
from segpipe.storage import Folder
from segpipe.writer import RunContext, ShardWriter

_DONE = object()


@dataclass
class ShardStats:
    images: int = 0
    errors: int = 0
    segments: int = 0
    batch_seconds: list[float] = field(default_factory=list)


def prefetch_decoded(source: Source, shard: Shard, *, read_threads: int, max_pixels: int,
                     depth: int) -> Iterator[DecodedImage | ImageFailure]:
    """Fetched and decoded images in plan order, produced up to `depth` ahead on a thread."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for ref, data in source.fetch(shard.images, threads=read_threads):
                if stop.is_set():
                    return
                item = data if isinstance(data, ImageFailure) else decode_image(
                    ref, data, max_pixels=max_pixels)
                buffer.put(item)
            buffer.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise
            buffer.put(exc)

    thread = threading.Thread(target=produce, name=f"prefetch-{shard.shard_id}", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def process_shard(
    shard: Shard,
    *,
    source: Source,
    segmenter: Segmenter,
    dst: Folder,
    run: RunContext,
    batch_size: int,
    attempt: int = 1,
    read_threads: int = 8,
    max_pixels: int = 89_478_485,
    model_lock: AbstractContextManager[Any] | None = None,
) -> dict[str, Any]:
    """Process and commit one shard; returns its commit marker. Per-image failures
    become error rows; only a failure of the shard as a whole raises."""
    started_at = time.perf_counter()
    forward_before = segmenter.forward_seconds
    loaded = segmenter.setup()
    writer = ShardWriter(dst, run, shard, loaded.label_set, attempt=attempt)
    lock = model_lock or nullcontext()
    stats = ShardStats()
    batch: list[DecodedImage] = []
    # One writer thread encodes PNGs and RLE while the model works on the next batch; being
    # a single thread, it keeps the rows in submission order, so retries write equal bytes.
    encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{shard.shard_id}")
    pending: deque[Future[None]] = deque()

    def write(out: Prediction | ImageFailure) -> None:
        if isinstance(out, Prediction):
            pending.append(encoding.submit(writer.add_prediction, out))
            stats.segments += len(out.segments)
        else:
            pending.append(encoding.submit(writer.add_failure, out))
            stats.errors += 1
        while len(pending) > 2 * batch_size:  # bounded: id maps wait in memory until encoded
            pending.popleft().result()

    def flush() -> None:
        started = time.perf_counter()
        with lock:
            outputs = segmenter(batch)
        stats.batch_seconds.append(time.perf_counter() - started)
        for out in outputs:
            write(out)
        batch.clear()

    try:
        for item in prefetch_decoded(source, shard, read_threads=read_threads,
                                     max_pixels=max_pixels, depth=2 * batch_size):
            stats.images += 1
            if isinstance(item, ImageFailure):
                write(item)
                continue
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        while pending:
            pending.popleft().result()
    finally:
        encoding.shutdown(wait=True, cancel_futures=True)
    marker = writer.commit()
    # Timings ride along in the returned marker only; the stored marker stays deterministic.
    marker["batch_seconds"] = stats.batch_seconds
    marker["forward_s"] = segmenter.forward_seconds - forward_before
    marker["wall_s"] = time.perf_counter() - started_at
    return marker
