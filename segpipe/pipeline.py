"""One shard, start to finish: read -> decode -> batch -> segment -> write -> commit.

Knows nothing of Ray. Reading and decoding run on a background thread a bounded
number of images ahead, and post-processing and writing on another, so that both
overlap with the model's forward on the current batch.
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
from segpipe.records import DecodedImage, ImageFailure, ImageRef, Prediction, Shard
from segpipe.segmenter import Forwarded, Segmenter
from segpipe.sources import Source
from segpipe.sources.located import WITHHELD, withheld_failure
from segpipe.storage import Folder, ParallelWrites
from segpipe.writer import RunContext, ShardWriter

_DONE = object()


@dataclass
class ShardStats:
    images: int = 0
    errors: int = 0
    segments: int = 0
    batch_seconds: list[float] = field(default_factory=list)
    forward_seconds: float = 0.0


def prefetch_decoded(source: Source, shard: Shard, *, read_threads: int, max_pixels: int,
                     depth: int) -> Iterator[DecodedImage | ImageFailure]:
    """Fetched and decoded images in plan order, produced up to `depth` ahead on a thread."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fetched() -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
        """The source's fetch, with the refs whose names the plan withheld as failures, in
        plan order."""
        readable = source.fetch([r for r in shard.images if r.locator != WITHHELD],
                                threads=read_threads)
        for ref in shard.images:
            yield (ref, withheld_failure(ref)) if ref.locator == WITHHELD else next(readable)

    def produce() -> None:
        try:
            for ref, data in fetched():
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
    become error rows; only a failure of the shard as a whole raises.

    Three stages overlap: a prefetch thread reads and decodes; this thread runs each
    batch's preprocessing and forward; one finishing thread post-processes a batch and
    encodes its outputs while the model works on the next (PNG uploads fan out from there).
    The finishing thread being single keeps rows in submission order, so a retried shard
    writes equal bytes.
    """
    started_at = time.time()
    loaded = segmenter.setup()
    lock = model_lock or nullcontext()
    stats = ShardStats()
    batch: list[DecodedImage] = []
    pending: deque[Future[None]] = deque()

    with ParallelWrites(dst, read_threads) as writes, ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"finish-{shard.shard_id}") as finishing:
        writer = ShardWriter(dst, run, shard, loaded.label_set, writes, attempt=attempt)

        def write(outputs: list[Prediction | ImageFailure]) -> None:
            for out in outputs:
                if isinstance(out, Prediction):
                    writer.add_prediction(out)
                    stats.segments += len(out.segments)
                else:
                    writer.add_failure(out)
                    stats.errors += 1

        def submit(fn: Any, *args: Any) -> None:
            pending.append(finishing.submit(fn, *args))
            while len(pending) > 2:  # bounded: a batch's logits wait in memory until finished
                pending.popleft().result()

        def flush() -> None:
            started = time.perf_counter()
            with lock:
                forwarded = segmenter.forward(batch)
            stats.batch_seconds.append(time.perf_counter() - started)
            stats.forward_seconds += sum(f.forward_s for f in forwarded if isinstance(f, Forwarded))
            submit(lambda f=forwarded: write(segmenter.finish(f)))
            batch.clear()

        try:
            for item in prefetch_decoded(source, shard, read_threads=read_threads,
                                         max_pixels=max_pixels, depth=2 * batch_size):
                stats.images += 1
                if isinstance(item, ImageFailure):
                    submit(write, [item])
                    continue
                batch.append(item)
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
        marker = writer.commit()
    # Timings ride along in the returned marker only; the stored marker stays deterministic.
    marker["batch_seconds"] = stats.batch_seconds
    marker["forward_s"] = stats.forward_seconds
    marker["started_at"] = started_at
    marker["finished_at"] = time.time()
    return marker
