"""One shard, start to finish: read -> decode -> batch -> segment -> write -> commit.

Knows nothing of Ray. Reading and decoding run on a background thread a bounded
number of images ahead, and post-processing and writing on another, so that both
overlap with the model's forward on the current batch. A read that takes longer than
the read timeout becomes an errors row, and the shard goes on without it.
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

from segpipe.core.config import default_of
from segpipe.core.items import (
    DecodedImage,
    ImageFailure,
    ImageRef,
    Prediction,
    RunContext,
    Shard,
    ShardResult,
)
from segpipe.destination.writer import ShardWriter
from segpipe.io.storage import Folder, ParallelWrites, redact
from segpipe.model.segmenter import ForwardedBatch, Segmenter
from segpipe.pipeline.decode import decode_image
from segpipe.sources import Source
from segpipe.sources.redacted import WITHHELD, withheld_failure

_DONE = object()


@dataclass
class ShardStats:
    """Timings of one shard; its counts are the commit marker's."""

    batch_seconds: list[float] = field(default_factory=list)
    forward_seconds: float = 0.0


class _Feed:
    """An iterator run on a daemon thread, up to `depth` items ahead, whose items are awaited
    with an optional timeout.

    Nothing ever waits for the thread: once abandoned, it ends at its next item, or never
    (a read stuck in the kernel), and keeps no one from finishing.
    """

    def __init__(self, items: Iterator[Any], *, name: str, depth: int = 1) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._abandoned = threading.Event()
        threading.Thread(target=self._run, args=(items,), name=name, daemon=True).start()

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", _DONE))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader to raise
            self._put(("error", exc))

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._abandoned.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self, timeout: float | None = None) -> Any:
        """The next item, or `_DONE` after the last; raises `queue.Empty` when none came
        within `timeout` seconds, and what the iterator raised."""
        kind, value = self._queue.get(timeout=timeout)
        if kind == "error":
            raise value
        return value

    def abandon(self) -> None:
        self._abandoned.set()


def read_timeout_failure(ref: ImageRef, timeout: float) -> ImageFailure:
    return ImageFailure(ref, "read", "ReadTimeout",
                        redact(f"{ref.display}: not read within {timeout:g} s (--read-timeout)"))


def fetch_within(source: Source, refs: list[ImageRef], *, threads: int,
                 timeout: float | None) -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
    """`source.fetch(refs)`, where an image whose bytes do not come within `timeout` seconds
    of asking becomes a read failure, and the images after it are fetched anew.

    A read stuck in the kernel (a FIFO, a server that never answers) cannot be cancelled:
    the fetch it holds up is abandoned on its thread. Timing each image from when it is
    asked for, not from when its read began, never counts it short, whatever the source's
    read-ahead. Every source's fetch passes here, so every source gets the timeout.
    """
    if timeout is None:
        yield from source.fetch(refs, threads=threads)
        return
    start = 0
    while start < len(refs):
        feed = _Feed(source.fetch(refs[start:], threads=threads), name="fetch")
        try:
            for ref in refs[start:]:
                start += 1
                try:
                    item = feed.next(timeout)
                except queue.Empty:
                    yield ref, read_timeout_failure(ref, timeout)
                    break
                if item is _DONE:
                    raise RuntimeError("the source's fetch yielded fewer images than it was given")
                yield item
        finally:
            feed.abandon()


def prefetch_decoded(source: Source, shard: Shard, *, read_threads: int, max_pixels: int,
                     depth: int, read_timeout: float | None = None,
                     ) -> Iterator[DecodedImage | ImageFailure]:
    """Fetched and decoded images in plan order, produced up to `depth` ahead on a thread."""

    def fetched() -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
        """The source's fetch, with the refs whose names the plan withheld as failures, in
        plan order."""
        readable = fetch_within(source, [r for r in shard.images if r.locator != WITHHELD],
                                threads=read_threads, timeout=read_timeout)
        for ref in shard.images:
            yield (ref, withheld_failure(ref)) if ref.locator == WITHHELD else next(readable)

    def decoded() -> Iterator[DecodedImage | ImageFailure]:
        for ref, data in fetched():
            yield data if isinstance(data, ImageFailure) else decode_image(
                ref, data, max_pixels=max_pixels)

    # Not joined: the producer ends at its next item, or when its read returns or times out.
    feed = _Feed(decoded(), name=f"prefetch-{shard.shard_id}", depth=depth)
    try:
        while (item := feed.next()) is not _DONE:
            yield item
    finally:
        feed.abandon()


def process_shard(
    shard: Shard,
    *,
    source: Source,
    segmenter: Segmenter,
    dst: Folder,
    run: RunContext,
    batch_size: int,
    attempt: int = 1,
    read_threads: int = default_of("read_threads"),
    max_pixels: int = default_of("max_image_pixels"),
    read_timeout: float | None = None,
    model_lock: AbstractContextManager[Any] | None = None,
) -> ShardResult:
    """Process and commit one shard; returns its commit marker and timings. Per-image failures
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
                else:
                    writer.add_failure(out)

        def submit(fn: Any, *args: Any) -> None:
            pending.append(finishing.submit(fn, *args))
            while len(pending) > 2:  # bounded: a batch's logits wait in memory until finished
                pending.popleft().result()

        def flush() -> None:
            started = time.perf_counter()
            with lock:
                forwarded = segmenter.forward(batch)
            stats.batch_seconds.append(time.perf_counter() - started)
            stats.forward_seconds += sum(f.forward_s for f in forwarded
                                         if isinstance(f, ForwardedBatch))
            submit(lambda f=forwarded: write(segmenter.postprocess(f)))
            batch.clear()

        try:
            for item in prefetch_decoded(source, shard, read_threads=read_threads,
                                         max_pixels=max_pixels, depth=2 * batch_size,
                                         read_timeout=read_timeout):
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
    return ShardResult(marker, started_at=started_at, finished_at=time.time(),
                       forward_s=stats.forward_seconds, batch_seconds=tuple(stats.batch_seconds))
