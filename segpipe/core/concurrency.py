"""Bounded, ordered concurrency for I/O: many reads in flight, results in input order."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, threads: int) -> Iterator[tuple[T, R]]:
    """`(item, fn(item))` in input order, with at most `threads` + 1 calls in flight.

    Memory stays bounded by the pool, not by the number of items. Once the caller stops
    iterating, queued calls are dropped and running ones are not waited for: a call stuck
    in a read that never returns (a FIFO, a silent server) must not hold the caller up.
    """
    pool = _DaemonPool(max(1, threads))
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > threads:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.close()


class _DaemonPool:
    """Threads for `ordered_map`. Daemon threads, unlike ThreadPoolExecutor's, which the
    interpreter joins at exit: a call stuck in a read must not keep a process from exiting."""

    def __init__(self, size: int) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[Any], Any], Any] | None] = (
            queue.SimpleQueue())
        self._size = size
        self._started = 0

    def submit(self, fn: Callable[[T], R], item: T) -> Future[R]:
        if self._started < self._size:  # as many threads as calls, up to the size
            threading.Thread(target=self._work, name="ordered-map", daemon=True).start()
            self._started += 1
        future: Future[R] = Future()
        self._calls.put((future, fn, item))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, item = call
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn(item))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on it
                future.set_exception(exc)

    def close(self) -> None:
        """Each thread ends after the calls queued before; no one waits for it."""
        for _ in range(self._started):
            self._calls.put(None)
