"""Images named by URI in a list (a manifest, a URI column): resolving and reading them.

A URI may use any fsspec protocol that the list's `UriPolicy` allows (see `policy`). A
relative one is resolved against the folder of the list that names it. The storage options
given for the source apply to every remote protocol (they are meant for the user's object
store), never to local files or web servers.

No image is read past the byte limit: an object bigger than it is refused from its listed
size when there is one, and otherwise only the limit and one byte more are read.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.core import split_protocol, strip_protocol

from segpipe.core.items import ImageRef
from segpipe.io.storage import filesystem
from segpipe.sources.base import (
    DEFAULT_MAX_IMAGE_BYTES,
    LOCAL_PROTOCOLS,
    Fetched,
    fetch_concurrently,
    read_failure,
    too_large,
    uri_of,
)
from segpipe.sources.policy import HTTP_SCHEMES, UriPolicy, protocols_of
from segpipe.sources.redacted import Recover

READ_CHUNK = 2**20
_LISTED_SIZE = re.compile(r"size:(\d+):")


def folder_of(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The absolute URI of the folder holding `url`."""
    return uri_of(url, filesystem(url, storage_options)[1]).rsplit("/", 1)[0]


def resolve_uri(folder: str, text: str) -> str:
    """`text` as an absolute URI: `file://` becomes a plain path, relative paths join `folder`."""
    protocol, path = split_protocol(text)
    if protocol in ("file", "local"):
        return path
    if protocol or text.startswith("/"):
        return text
    base_protocol, base = split_protocol(folder)
    joined = posixpath.normpath(f"{base}/{text}")
    return joined if base_protocol in LOCAL_PROTOCOLS else f"{base_protocol}://{joined}"


def listed_size(ref: ImageRef) -> int | None:
    """The size the listing gave (in the ref's version), when it gave one."""
    match = _LISTED_SIZE.match(ref.version or "")
    return int(match.group(1)) if match else None


def read_at_most(fs: fsspec.AbstractFileSystem, path: str, limit: int) -> bytes:
    """The first `limit` bytes of a file (all of a smaller one), never taking more from storage."""
    if _is_http(fs):
        # Streamed: a server may ignore a Range header and send everything. (A size given
        # spares the HEAD request that opening makes otherwise; a stream does not use it.)
        with fs.open(path, "rb", block_size=0, size=limit) as f:
            chunks: list[bytes] = []
            taken = 0
            while taken < limit and (chunk := f.read(min(READ_CHUNK, limit - taken))):
                chunks.append(chunk)
                taken += len(chunk)
            return b"".join(chunks)
    try:
        return fs.cat_file(path, start=0, end=limit)
    except OSError:
        # An empty object has no first byte: S3 answers a range of it with 416.
        if _size_or_none(fs, path) == 0:
            return b""
        raise


def read_capped(fs: fsspec.AbstractFileSystem, path: str, max_bytes: int,
                known_size: int | None = None) -> bytes:
    """A file's bytes, or ImageTooLarge when it has more than `max_bytes`: raised from
    `known_size` before reading, else after reading `max_bytes` + 1 bytes."""
    if known_size is not None and known_size > max_bytes:
        raise too_large(known_size, max_bytes)
    data = read_at_most(fs, path, max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(_size_or_none(fs, path), max_bytes)
    return data


def _is_http(fs: fsspec.AbstractFileSystem) -> bool:
    # By protocol, not class: importing fsspec's HTTP filesystem loads aiohttp everywhere.
    return any(p in HTTP_SCHEMES for p in protocols_of(fs))


def _size_or_none(fs: fsspec.AbstractFileSystem, path: str) -> int | None:
    try:
        size = fs.size(path)
    except Exception:  # noqa: BLE001 - only a message or a fallback depends on it
        return None
    return int(size) if size is not None else None


def fetch_uris(refs: Sequence[ImageRef], storage_options: dict[str, Any], *, threads: int,
               recover: Recover | None = None, policy: UriPolicy | None = None,
               max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Fetched:
    """Each ref's bytes read from its own URI, concurrently, in the order of `refs`.

    A ref planned redacted (it has a locator, see `redacted`) is read from the real URI that
    `recover` re-reads from the source, all of them at once before the first read. With a
    `policy`, each URI is checked on this worker right before it is read.
    """
    redacted = [ref for ref in refs if ref.locator is not None]
    real = recover(redacted) if redacted and recover is not None else {}
    missing = LookupError("planned redacted, and this source cannot re-read its URI")
    # Per image: the URI to read, or why there is none.
    found = {ref.image_id: ref.uri if ref.locator is None else real.get(ref.image_id, missing)
             for ref in refs}
    filesystems: dict[str | None, fsspec.AbstractFileSystem] = {}

    def options_for(protocol: str | None) -> dict[str, Any] | None:
        if protocol in HTTP_SCHEMES:
            # Object-store options (endpoint, credentials) mean nothing to a web server.
            return policy.http_options() if policy is not None else None
        return None if protocol in LOCAL_PROTOCOLS else storage_options

    def read(ref: ImageRef) -> bytes:
        uri = found[ref.image_id]
        assert isinstance(uri, str)  # refs without a URI are never read
        if policy is not None:
            policy.check(uri)
        protocol, _ = split_protocol(uri)
        if protocol not in filesystems:
            filesystems[protocol] = filesystem(uri, options_for(protocol))[0]
        # The filesystem's own path form: "bucket/key" on S3, the whole URL over HTTP.
        return read_capped(filesystems[protocol], strip_protocol(uri), max_bytes,
                           listed_size(ref))

    results = fetch_concurrently([ref for ref in refs if isinstance(found[ref.image_id], str)],
                                 read, threads=threads)
    for ref in refs:
        uri = found[ref.image_id]
        # A URI that could not be re-read fails here, outside the retries: its error is final,
        # and must never pass for a transient one (which would fail the whole shard).
        yield (ref, read_failure(ref, uri)) if isinstance(uri, BaseException) else next(results)
