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
from segpipe.sources.base import LOCAL_PROTOCOLS, Fetched, fetch_concurrently, uri_of
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


def fetch_uris(refs: Sequence[ImageRef], storage_options: dict[str, Any], *,
               threads: int) -> Fetched:
    """Each ref's bytes read from its own URI, concurrently, in the order of `refs`."""
    filesystems: dict[str | None, fsspec.AbstractFileSystem] = {}

    def read(ref: ImageRef) -> bytes:
        protocol, _ = split_protocol(ref.uri)
        if protocol not in filesystems:
            # Object-store options (endpoint, credentials) mean nothing to a web server.
            plain = protocol in LOCAL_PROTOCOLS or protocol in ("http", "https")
            options = None if plain else storage_options
            filesystems[protocol] = filesystem(ref.uri, options)[0]
        # The filesystem's own path form: "bucket/key" on S3, the whole URL over HTTP.
        return filesystems[protocol].cat_file(strip_protocol(ref.uri))

    return fetch_concurrently(refs, read, threads=threads)
