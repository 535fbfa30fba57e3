"""The source contract, and what every source shares: ordered concurrent reads, the
placeholder for a container that could not be read, why a listed key is not planned, the
byte limit of an image, and URI helpers."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from fsspec.core import split_protocol

from segpipe.core.concurrency import ordered_map
from segpipe.core.config import default_of
from segpipe.core.errors import SegpipeError
from segpipe.core.identity import image_id
from segpipe.core.items import ImageFailure, ImageRef
from segpipe.io.storage import is_transient, redact, with_retries

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# The member of the placeholder ref that stands for the unreadable part of a container
# (a tar or Parquet file). Planning cannot name the images it could not read, so it plans
# this one instead and the worker turns it into an errors row: never a silent skip.
UNREADABLE = "<unreadable>"

LOCAL_PROTOCOLS = (None, "file", "local")

# What `fetch` yields: each ref with its bytes or the failure reading them.
Fetched = Iterator[tuple[ImageRef, "bytes | ImageFailure"]]

# Why a listed key is not planned, and how the end of a run says it. Every key a listing
# meets is planned, or counted under one of these: never a silent skip.
SKIP_EXTENSION = "extension"
SKIP_NOT_REGULAR = "not_regular_file"
SKIP_FOLDER_SEEN = "folder_seen"
SKIP_UNLISTABLE = "unlistable_folder"
SKIP_NO_URI = "no_uri"
SKIP_REPEAT = "repeat"
SKIP_INSIDE_DST = "inside_destination"
SKIP_SEEN = "already_annotated"
SKIP_REASONS = {
    SKIP_EXTENSION: "not an image extension",
    SKIP_NOT_REGULAR: "not a regular file (a FIFO, socket, device or dangling link)",
    SKIP_FOLDER_SEEN: "a folder reached again through a symlink",
    SKIP_UNLISTABLE: "a folder that could not be listed (permission denied)",
    SKIP_NO_URI: "an entry without a URI",
    SKIP_REPEAT: "an image listed again",
    SKIP_INSIDE_DST: "a file under the destination (segpipe's own outputs)",
    SKIP_SEEN: "an image already annotated at the destination (incremental)",
}

# Skipped keys by reason, counted while listing.
Skipped = Counter[str]

# What one image may weigh by default: a bigger object named like an image is an errors row
# rather than gigabytes read into a worker's memory.
DEFAULT_MAX_IMAGE_BYTES: int = default_of("max_image_bytes")


class ImageTooLarge(SegpipeError, ValueError):
    """An image over the byte limit: refused, never read whole."""


def too_large(size: int | None, limit: int) -> ImageTooLarge:
    weight = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return ImageTooLarge(f"not read: {weight}, over the limit of {limit} bytes per image "
                         "(--max-image-bytes)")


def describe_skipped(skipped: dict[str, int]) -> str:
    """The skipped keys for people: "3 keys: 2 not an image extension, 1 ..."."""
    total = sum(skipped.values())
    parts = ", ".join(f"{n} {SKIP_REASONS.get(reason, reason)}"
                      for reason, n in sorted(skipped.items()) if n)
    return f"{total} key{'' if total == 1 else 's'}" + (f": {parts}" if parts else "")


class EmptySourceError(SegpipeError, ValueError):
    """A source with nothing to annotate: a wrong URL, more often than not."""


class SourceConfigError(SegpipeError, ValueError):
    """The source does not fit its options (no image column, an id column repeating
    values): planning stops, since every image would fail the same way."""


class Source(Protocol):
    """Picklable: workers receive the source and fetch with it."""

    url: str

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        """Every image of the source, streamed, in a deterministic order; each listed key
        that is not an image is counted in `skipped` by its reason (SKIP_REASONS)."""
        ...

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        """Bytes for each ref, in the order of `refs`; failures are values, not raises."""
        ...


def read_failure(ref: ImageRef, exc: BaseException) -> ImageFailure:
    return ImageFailure(ref, "read", type(exc).__name__, redact(f"{ref.display}: {exc}"))


# What a source does with an error that ended a read, once its retries are spent: raise it
# (the shard fails) or return it (it becomes the errors row of each image it left unread).
ReadErrorPolicy = Callable[[BaseException], BaseException]


def fail_shard_on_outage(exc: BaseException) -> BaseException:
    """The sources' error policy: a transient storage error still failing after retries is
    an outage, not a bad image, so it fails the shard and the pool tries it again later
    rather than commit an errors row for good; any other error is returned, for the rows."""
    if is_transient(exc):
        raise exc
    return exc


def fetch_concurrently(
    refs: Sequence[ImageRef], read: Callable[[ImageRef], bytes], *, threads: int,
    on_error: ReadErrorPolicy = fail_shard_on_outage,
) -> Fetched:
    """Read refs on a bounded thread pool, yielding in input order; transient errors are
    retried with backoff, and what still fails goes to `on_error`, whose error becomes an
    ImageFailure naming the URI."""

    def read_one(ref: ImageRef) -> bytes | ImageFailure:
        try:
            return with_retries(lambda: read(ref), what=ref.uri)
        except Exception as exc:  # noqa: BLE001 - the policy raises it or makes it a row
            return read_failure(ref, on_error(exc))

    return ordered_map(read_one, refs, threads=threads)


def unreadable_ref(uri: str) -> ImageRef:
    return ImageRef(image_id(uri, UNREADABLE), uri, UNREADABLE)


def uri_of(url: str, path: str) -> str:
    """The URI of `path` on the filesystem of `url`: plain paths stay plain for local data."""
    protocol, _ = split_protocol(url)
    if protocol in LOCAL_PROTOCOLS or split_protocol(path)[0]:
        return path  # local, or a whole URL already: fsspec's HTTP paths keep their scheme
    return f"{protocol}://{path}"


def plan_containers(containers: Iterable[tuple[str, Iterable[ImageRef]]], *,
                    url: str) -> Iterator[ImageRef]:
    """The refs of each container (a tar, a table file), and a placeholder after a container
    that could not be read to its end.

    Placeholders of missing containers wait for one that exists: when none does, the URL
    is wrong, and that is one clear error rather than a job of nothing but failures.
    """
    held: list[ImageRef] = []
    first_missing: BaseException | None = None
    exists = False  # some container was there (readable or not)
    for uri, refs in containers:
        error: BaseException | None = None
        try:
            for ref in refs:
                exists = True
                yield from held
                held.clear()
                yield ref
        except SourceConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - the placeholder becomes an errors row
            log.warning("%s: %s", redact(uri), redact(f"{type(exc).__name__}: {exc}"))
            error = exc
        if error is None or not isinstance(error, FileNotFoundError):
            exists = True
        elif not exists:
            first_missing = first_missing or error
            held.append(unreadable_ref(uri))
            continue
        yield from held
        held.clear()
        if error is not None:
            yield unreadable_ref(uri)
    if held:
        raise EmptySourceError(f"nothing readable at {redact(url)}: {first_missing}")


def is_retryable(exc: BaseException) -> bool:
    """Worth reading again: I/O trouble the storage layer calls transient, never bad bytes."""
    return isinstance(exc, OSError) and is_transient(exc)


# A scan of one container: given the keys to skip, (key, bytes or the error reading it).
Scan = Callable[[set[Any]], Iterator[tuple[Any, "bytes | BaseException"]]]


def fetch_scanned(
    refs: Sequence[ImageRef], keys: Sequence[Hashable | None], scan: Scan, *, attempts: int = 4,
    on_error: ReadErrorPolicy = fail_shard_on_outage,
) -> Fetched:
    """Refs read by one sequential scan of their container, in the order of `refs`.

    `keys[i]` is what the scan calls `refs[i]` (None for a placeholder); `scan(skip)`
    yields `(key, bytes or the error reading it)` for every wanted key not in `skip`. A
    transient error restarts the scan, skipping what was read; the error that ends the
    scan goes to `on_error`, and the error it returns fails the refs not read yet. Results
    are handed on as soon as the order allows.
    """
    results: dict[Hashable, bytes | BaseException] = {}
    done: set[Hashable] = set()
    pending = deque(zip(refs, keys, strict=True))
    error: BaseException | None = None
    for attempt in range(1, attempts + 1):
        try:
            for key, value in scan(done):
                results[key] = value
                done.add(key)
                while pending and pending[0][1] in results:
                    ref, key_of_ref = pending.popleft()
                    yield ref, _as_result(ref, results.pop(key_of_ref))
            error = None
            break
        except Exception as exc:  # noqa: BLE001 - reported per image below
            error = exc
            if not is_retryable(exc) or attempt == attempts:
                break
            time.sleep(0.2 * 2 ** (attempt - 1))
    if error is not None and pending:
        error = on_error(error)
    for ref, key in pending:
        if key in results:
            yield ref, _as_result(ref, results.pop(key))
        elif error is not None:
            yield ref, read_failure(ref, error)
        elif key is None:
            yield ref, read_failure(ref, OSError("could not be read to its end when planned"))
        else:
            yield ref, read_failure(ref, KeyError(f"{key!r} not found"))


def _as_result(ref: ImageRef, value: bytes | BaseException) -> bytes | ImageFailure:
    return read_failure(ref, value) if isinstance(value, BaseException) else value
