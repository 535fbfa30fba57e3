"""Every data path goes through here: fsspec URLs, folders rooted at a prefix, safe keys.

A `Folder` is an fsspec filesystem plus a root path. Keys inside a folder are
relative, '/'-separated and checked so that no key can name a place outside the root.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import fsspec
from fsspec.core import split_protocol, strip_protocol

from segpipe.core.errors import SegpipeError

T = TypeVar("T")

_SAFE_KEY_PART = re.compile(r"^[A-Za-z0-9._=+-]+$")


class UnsafeKeyError(SegpipeError, ValueError):
    """A key that would escape its folder or is not a plain relative key."""


# botocore's "standard" retries (500s, throttling, dropped connections, with jittered
# backoff), unless the AWS environment picks a mode; `with_retries` adds a slower outer
# loop for longer outages. Five attempts give up on an unreachable endpoint in seconds.
S3_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": 5}
# Bounded, so that an endpoint that never answers fails in seconds, not minutes.
S3_CONNECT_TIMEOUT_S = 10
# How files being written are named until they are complete: hidden files with this prefix.
# Only a file's own name is ever matched against it, never a folder above it, so that a
# destination may be spelled any way at all.
TEMP_PREFIX = ".segpipe-tmp-"


def storage_options_for(url: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for `url`: the standard environment, then explicit overrides.

    s3fs already reads AWS_ACCESS_KEY_ID, profiles and config files through botocore;
    the endpoint is read here as well so that older botocore releases honour it too.
    Retries and the connect timeout are set here; `config_kwargs` in `overrides`
    replaces them.
    """
    protocol, _ = split_protocol(url)
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            options.setdefault("client_kwargs", {})["region_name"] = region
        profile = os.environ.get("AWS_PROFILE")
        if profile:
            options["profile"] = profile
        config: dict[str, Any] = {"connect_timeout": S3_CONNECT_TIMEOUT_S}
        if not (os.environ.get("AWS_RETRY_MODE") or os.environ.get("AWS_MAX_ATTEMPTS")):
            config["retries"] = dict(S3_RETRIES)
        options["config_kwargs"] = config
    if overrides:
        options.update(overrides)
    if not is_local_url(url):
        # fsspec keeps each process's listings (and answers `exists`, `info` and sized
        # reads from them) with no way to learn what other processes wrote since: a driver
        # that listed a destination's runs would then miss the fragments and markers its
        # workers write. Every caller here reads what other processes write (driver and
        # workers, a run and its resume, `status` beside a running job), so listings are
        # never cached; it also keeps a big source's listing out of the driver's memory.
        options["use_listings_cache"] = False
    return options


def is_local_url(url: str) -> bool:
    return split_protocol(url)[0] in (None, "file", "local")


def filesystem(url: str, storage_options: dict[str, Any] | None = None,
               ) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-less path for `url`."""
    protocol, _ = split_protocol(url)
    fs = fsspec.filesystem(protocol or "file", **storage_options_for(url, storage_options))
    return fs, strip_protocol(url) if protocol else os.path.abspath(url)


def read_url(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """One whole file's bytes, at any fsspec URL, with retries. A missing file is a
    FileNotFoundError noted "while reading <url>", as every failed read is."""
    fs, path = filesystem(url, storage_options)
    return with_retries(lambda: fs.cat_file(path), what=url, doing="reading")


def check_key(key: str) -> str:
    """Return `key` if it is a plain relative key; raise otherwise.

    Output keys derive from ids, so this is a guard, not a sanitizer: it refuses
    absolute keys, '..', backslashes, percent-encoding and non-ASCII rather than
    trying to repair them.
    """
    parts = key.split("/")
    if not key or key.startswith("/") or any(
        part in ("", ".", "..") or not _SAFE_KEY_PART.match(part) for part in parts
    ):
        raise UnsafeKeyError(f"refusing output key {key!r}: not a plain relative key")
    return key


@dataclass(frozen=True)
class Folder:
    """A root prefix on some filesystem; all reads and writes take relative keys."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.url, self.storage_options)[0]

    @property
    def root(self) -> str:
        return filesystem(self.url, self.storage_options)[1].rstrip("/")

    @property
    def is_local(self) -> bool:
        return is_local_url(self.url)

    def path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def url_of(self, key: str) -> str:
        protocol, _ = split_protocol(self.url)
        path = self.path(key)
        return f"{protocol}://{path}" if protocol and not self.is_local else path

    def sub(self, key: str) -> Folder:
        return Folder(self.url_of(key), self.storage_options)

    def exists(self, key: str) -> bool:
        fs = self.fs
        return with_retries(lambda: fs.exists(self.path(key)), what=self.url_of(key),
                            doing="checking")

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one whole object; a reader sees the old one or the new one, never half."""
        if self.is_local:
            with self.open_atomic(key, text=False) as out:
                out.write(data)
        else:  # one PUT is atomic already
            fs, path = self.fs, self.path(key)
            with_retries(lambda: fs.pipe_file(path, data), what=self.url_of(key), doing="writing")

    def open_atomic(self, key: str, *, text: bool = True) -> AbstractContextManager[IO[Any]]:
        """A file to stream `key` into, published whole when the block ends without error."""
        return open_atomic(self.url_of(key), self.storage_options, text=text)

    def read_bytes(self, key: str) -> bytes:
        return read_url(self.url_of(key), self.storage_options)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def list(self, prefix: str) -> list[str]:
        """Keys (relative to the root) of the files under `prefix`, sorted."""
        fs = self.fs
        base = self.path(prefix)
        try:
            found = with_retries(lambda: fs.find(base), what=self.url_of(prefix), doing="listing")
        except FileNotFoundError:
            return []
        root_len = len(self.root) + 1
        return sorted(p[root_len:] for p in found if is_listed(p.rsplit("/", 1)[-1]))

    def children(self, prefix: str) -> builtins.list[str]:
        """Names of what lies directly under `prefix` (files and folders), sorted: one
        delimited listing, which on an object store costs a request per 1,000 children
        instead of one per 1,000 files below them."""
        fs = self.fs
        base = self.path(prefix).rstrip("/")
        try:
            found = with_retries(lambda: fs.ls(base, detail=False), what=self.url_of(prefix),
                                 doing="listing")
        except FileNotFoundError:
            return []
        names = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in found}
        return sorted(n for n in names if n and is_listed(n) and f"{base}/{n}" != base)

    def delete(self, key: str) -> None:
        fs, path = self.fs, self.path(key)
        if self.exists(key):
            with_retries(lambda: fs.rm(path, recursive=True), what=self.url_of(key),
                         doing="deleting")


def is_listed(name: str) -> bool:
    """Whether a file of this name (its own name, no folder) is listed: hidden files are
    not, and so neither are files still being written (`TEMP_PREFIX`)."""
    return not name.startswith(".")


@contextmanager
def open_atomic(url: str, storage_options: dict[str, Any] | None = None, *,
                text: bool = True) -> Iterator[IO[Any]]:
    """A file to stream `url` into; `url` changes only once the block ends without error.

    An error or Ctrl-C inside the block leaves whatever was at `url` before. The bytes go
    to a temporary file first: locally beside `url`, then renamed over it (atomic on one
    filesystem); for an object store in the local temp folder, then uploaded as one object.
    Streaming to the store instead would put the half-written object under `url` when an
    error unwinds (fsspec uploads the buffer on close), and a stream cannot be retried; one
    upload of a finished file is retried, and s3fs aborts its multipart upload on failure.
    """
    fs, path = filesystem(url, storage_options)
    local = is_local_url(url)
    folder = os.path.dirname(path) if local else tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    # Unique per call, so that threads and processes writing one key never share a file.
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with _create(tmp, text) as out:
            yield out
        if local:
            os.replace(tmp, path)
        else:
            with_retries(lambda: fs.put_file(tmp, path), what=url, doing="uploading")
    finally:
        with suppress(FileNotFoundError):
            os.remove(tmp)


def _create(path: str, text: bool) -> IO[Any]:
    # "x": never write into a file that someone else has open.
    return open(path, "x", encoding="utf-8") if text else open(path, "xb")


class ParallelWrites:
    """Whole-object writes into one folder on a few threads, a bounded number in flight.

    An object store takes one round trip per object; writing one at a time would leave
    the writer waiting on the network for each. Keys are independent, so order does not
    matter; `wait()` returns once every write has landed and raises the first failure.
    """

    def __init__(self, folder: Folder, threads: int) -> None:
        self.folder = folder
        self._limit = 2 * max(1, threads)  # bounds the encoded bytes waiting in memory
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="put")
        self._pending: deque[Future[None]] = deque()

    def put(self, key: str, data: bytes) -> None:
        self._pending.append(self._pool.submit(self.folder.write_bytes, key, data))
        while len(self._pending) > self._limit:
            self._pending.popleft().result()

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParallelWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Error codes of throttling and server-side trouble, as S3 and botocore's retry rules name them.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "InternalError", "ServiceUnavailable",
})
# What s3fs turns those codes into: OSError(EREMOTEIO) for 500s, OSError(EBUSY) for SlowDown
# and 503s; and the socket errors of a dropped connection.
_TRANSIENT_ERRNOS = frozenset({
    getattr(errno, "EREMOTEIO", errno.EIO), errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET,
    errno.ECONNABORTED, errno.EPIPE, errno.EAGAIN,
})
_TRANSIENT_TEXT = re.compile(
    r"SlowDown|Throttl|RequestTimeout|InternalError|ServiceUnavailable|reduce your request rate"
    r"|\b(?:429|50[0234])\b|Connection|Timeout|reset by peer|ServerDisconnected"
    r"|ClientPayloadError|IncompleteRead|ContentLengthError"  # a body cut short
)
# The endpoint could not be reached at all, after botocore's own retries: a wrong or down
# endpoint, which more waiting will not fix; failing now names it in seconds.
_UNREACHABLE = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                          "ConnectionRefusedError"})


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from (s3fs keeps botocore's as the cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__)


def _aws_code_and_status(exc: BaseException) -> tuple[str | None, int | None]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, None
    code = (response.get("Error") or {}).get("Code")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code, status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: throttling, server errors and dropped connections; not
    missing objects, refused access, or an endpoint that cannot be reached at all."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    chain = list(_causes(exc))
    if any(cls.__name__ in _UNREACHABLE for e in chain for cls in type(e).__mro__):
        return False
    for e in chain:
        code, status = _aws_code_and_status(e)
        if (isinstance(e, (ConnectionError, TimeoutError)) or code in _TRANSIENT_CODES
                or (status is not None and (status >= 500 or status == 429))
                or (isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS)
                or _TRANSIENT_TEXT.search(f"{type(e).__name__} {e}")):
            return True
    return False


def with_retries(call: Callable[[], T], *, what: str, doing: str = "accessing",
                 attempts: int = 6, base_delay: float = 0.2) -> T:
    """Run `call`, retrying transient storage errors with exponential backoff.

    The error that ends it carries a note "while <doing> <what>": a storage library's own
    message is often the bare path, which says neither what was done nor where.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == attempts or not is_transient(exc):
                _add_note(exc, f"while {doing} {redact_uri(what)}")
                raise
            time.sleep(base_delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _add_note(exc: BaseException, note: str) -> None:
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)


def describe_error(exc: BaseException) -> str:
    """One line for a person: the exception's type, its message and its notes."""
    return "; ".join([f"{type(exc).__name__}: {exc}", *getattr(exc, "__notes__", ())])


_CREDENTIAL_QUERY = re.compile(
    r"(?i)([?&](?:X-Amz-[A-Za-z-]+|Signature|AWSAccessKeyId|Expires|sig|se|sp|sv|token|key)=)[^&\s'\"]*"
)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def redact(text: str) -> str:
    """Remove signed-URL query values and known credentials from `text`."""
    text = _CREDENTIAL_QUERY.sub(r"\1<redacted>", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "<redacted>")
    return text


def strip_credentials(uri: str) -> str:
    """`uri` without what makes it a credential by its shape: signed query values and
    user:password. Unlike `redact_uri` it does not depend on this process's environment,
    so a driver and its workers (whose credentials may differ) agree on it."""
    uri = re.sub(r"(?<=://)[^/@\s]+@", "", uri)
    return _CREDENTIAL_QUERY.sub(r"\1<redacted>", uri)


def redact_uri(uri: str) -> str:
    """A URI fit to store or show: no query string credentials, no user:password, and no
    credential of this process's environment."""
    return redact(strip_credentials(uri))
