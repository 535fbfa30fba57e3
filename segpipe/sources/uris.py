"""Images named by URI in a list (a manifest, a URI column): resolving and reading them.

A URI may use any fsspec protocol. A relative one is resolved against the folder of the
list that names it. The storage options given for the source apply to every remote
protocol (they are meant for the user's object store), never to local files.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import fsspec
from fsspec.core import split_protocol, strip_protocol

from segpipe.records import ImageRef
from segpipe.sources.base import (
    LOCAL_PROTOCOLS,
    Fetched,
    fetch_concurrently,
    read_failure,
    uri_of,
)
from segpipe.sources.located import Recover
from segpipe.storage import filesystem


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


def fetch_uris(refs: Sequence[ImageRef], storage_options: dict[str, Any], *, threads: int,
               recover: Recover | None = None) -> Fetched:
    """Each ref's bytes read from its own URI, concurrently, in the order of `refs`.

    A ref planned redacted (it has a locator, see `located`) is read from the real URI that
    `recover` re-reads from the source, all of them at once before the first read.
    """
    located = [ref for ref in refs if ref.locator is not None]
    real = recover(located) if located and recover is not None else {}
    missing = LookupError("planned redacted, and this source cannot re-read its URI")
    # Per image: the URI to read, or why there is none.
    found = {ref.image_id: ref.uri if ref.locator is None else real.get(ref.image_id, missing)
             for ref in refs}
    filesystems: dict[str | None, fsspec.AbstractFileSystem] = {}

    def read(ref: ImageRef) -> bytes:
        uri = found[ref.image_id]
        assert isinstance(uri, str)  # refs without a URI are never read
        protocol, _ = split_protocol(uri)
        if protocol not in filesystems:
            # Object-store options (endpoint, credentials) mean nothing to a web server.
            plain = protocol in LOCAL_PROTOCOLS or protocol in ("http", "https")
            options = None if plain else storage_options
            filesystems[protocol] = filesystem(uri, options)[0]
        # The filesystem's own path form: "bucket/key" on S3, the whole URL over HTTP.
        return filesystems[protocol].cat_file(strip_protocol(uri))

    results = fetch_concurrently([ref for ref in refs if isinstance(found[ref.image_id], str)],
                                 read, threads=threads)
    for ref in refs:
        uri = found[ref.image_id]
        # A URI that could not be re-read fails here, outside the retries: its error is final,
        # and must never pass for a transient one (which would fail the whole shard).
        yield (ref, read_failure(ref, uri)) if isinstance(uri, BaseException) else next(results)
