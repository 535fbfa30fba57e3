"""The source contract, and the concurrent fetch every source shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from segpipe.records import ImageFailure, ImageRef
from segpipe.storage import redact, with_retries


class Source(Protocol):
    """Picklable: workers receive the source and fetch with it."""

    url: str

    def list_images(self) -> Iterator[ImageRef]:
        """Every image of the source, streamed, in a deterministic order."""
        ...

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
        """Bytes for each ref, in the order of `refs`; failures are values, not raises."""
        ...


def fetch_concurrently(
    refs: Sequence[ImageRef], read: Callable[[ImageRef], bytes], *, threads: int
) -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
    """Read refs on a bounded thread pool, yielding in input order.

    At most `threads` reads are in flight beyond the one being consumed, so memory
    stays bounded by the pool, not by the shard.
    """

    def read_one(ref: ImageRef) -> bytes | ImageFailure:
        try:
            return with_retries(lambda: read(ref), what=ref.uri)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an errors row
            return ImageFailure(ref, "read", type(exc).__name__, redact(f"{ref.display}: {exc}"))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = []
        it = iter(refs)
        for ref in it:
            pending.append((ref, pool.submit(read_one, ref)))
            if len(pending) > threads:
                break
        while pending:
            ref, future = pending.pop(0)
            yield ref, future.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read_one, nxt)))
