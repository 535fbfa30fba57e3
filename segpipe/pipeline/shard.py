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

from segpipe.core.concurrency import ordered_map
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
from segpipe.destination.writer import EncodedPrediction, ShardWriter
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
                     depth: int, read_timeout: float | None = None, decode_threads: int = 1,
                     draft_to: int | None = None) -> Iterator[DecodedImage | ImageFailure]:
    """Fetched and decoded images in plan order, produced up to `depth` ahead on a thread,
    decoded on `decode_threads` (Pillow's decoders release the GIL); JPEGs as reduced-size
    drafts whose sides are at least `draft_to` pixels, when given."""

    def fetched() -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
        """The source's fetch, with the refs whose names the plan withheld as failures, in
        plan order."""
        readable = fetch_within(source, [r for r in shard.images if r.locator != WITHHELD],
                                threads=read_threads, timeout=read_timeout)
        for ref in shard.images:
            yield (ref, withheld_failure(ref)) if ref.locator == WITHHELD else next(readable)

    def decode(fetched_image: tuple[ImageRef, bytes | ImageFailure]) -> DecodedImage | ImageFailure:
        ref, data = fetched_image
        return data if isinstance(data, ImageFailure) else decode_image(
            ref, data, max_pixels=max_pixels, draft_to=draft_to)

    def decoded() -> Iterator[DecodedImage | ImageFailure]:
        if decode_threads <= 1:
            yield from map(decode, fetched())
            return
        for _, image in ordered_map(decode, fetched(), threads=decode_threads):
            yield image

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
    cpu_threads: int = 1,
    jpeg_draft: bool = False,
) -> ShardResult:
    """Process and commit one shard; returns its commit marker and timings. Per-image failures
    become error rows; only a failure of the shard as a whole raises.

    Three stages overlap: a prefetch thread reads and decodes; this thread runs each
    batch's preprocessing and forward; finishing threads post-process batches and encode
    their outputs while the model works on the next (PNG uploads fan out from there).
    Decode and finishing each get `cpu_threads` threads: their work (Pillow, zlib, torch)
    releases the GIL, so it spreads over the worker's CPUs. This thread adds the finished
    batches' rows in submission order, so a retried shard writes equal bytes. With
    `jpeg_draft`, JPEGs decode as drafts just large enough for the model's input.
    """
    started_at, started_mono = time.time(), time.monotonic()
    loaded = segmenter.setup()
    lock = model_lock or nullcontext()
    stats = ShardStats()
    batch: list[DecodedImage] = []
    pending: deque[Future[list[EncodedPrediction | ImageFailure]]] = deque()
    threads = max(1, cpu_threads)

    with ParallelWrites(dst, read_threads) as writes, ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"finish-{shard.shard_id}") as finishing:
        writer = ShardWriter(dst, run, shard, loaded.label_set, writes, attempt=attempt)

        def finish(forwarded: list[ForwardedBatch | ImageFailure],
                   ) -> list[EncodedPrediction | ImageFailure]:
            return [writer.encode(out) if isinstance(out, Prediction) else out
                    for out in segmenter.postprocess(forwarded)]

        def write(outputs: list[EncodedPrediction | ImageFailure]) -> None:
            for out in outputs:
                if isinstance(out, EncodedPrediction):
                    writer.add_encoded(out)
                else:
                    writer.add_failure(out)

        def enqueue(future: Future[list[EncodedPrediction | ImageFailure]]) -> None:
            pending.append(future)
            # Bounded: a batch's logits wait in memory until finished.
            while len(pending) > threads + 1:
                write(pending.popleft().result())

        def failed(item: ImageFailure) -> Future[list[EncodedPrediction | ImageFailure]]:
            future: Future[list[EncodedPrediction | ImageFailure]] = Future()
            future.set_result([item])
            return future

        def flush() -> None:
            started = time.perf_counter()
            with lock:
                forwarded = segmenter.forward(batch)
            stats.batch_seconds.append(time.perf_counter() - started)
            stats.forward_seconds += sum(f.forward_s for f in forwarded
                                         if isinstance(f, ForwardedBatch))
            enqueue(finishing.submit(finish, forwarded))
            batch.clear()

        try:
            for item in prefetch_decoded(source, shard, read_threads=read_threads,
                                         max_pixels=max_pixels, depth=2 * batch_size,
                                         draft_to=segmenter.input_edge() if jpeg_draft else None,
                                         read_timeout=read_timeout, decode_threads=threads):
                if isinstance(item, ImageFailure):
                    enqueue(failed(item))
                    continue
                batch.append(item)
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
            while pending:
                write(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()
        marker = writer.commit()
    return ShardResult(marker, started_at=started_at, finished_at=time.time(),
                       span=(started_mono, time.monotonic()),
                       forward_s=stats.forward_seconds, batch_seconds=tuple(stats.batch_seconds))
