"""Image files under a prefix or glob (or a `::` list or brace pattern of them), on any
fsspec filesystem.

The listing is streamed and sorted by key (see `listing`); files whose extension is not
an image extension (compared case-insensitively) are skipped, and counted. Each file is
one image, identified by its URI; its version is the ETag, else size and mtime.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from segpipe.core.identity import image_id
from segpipe.core.items import ImageRef
from segpipe.sources.base import DEFAULT_MAX_IMAGE_BYTES, SKIP_EXTENSION, Fetched, Skipped
from segpipe.sources.listing import expand_urls, list_files
from segpipe.sources.uris import fetch_uris

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
)


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > name.rfind("/") and name[dot:].lower() in IMAGE_EXTENSIONS


def version_of(info: dict[str, Any]) -> str | None:
    """Content identity from listing metadata: the ETag, else size and mtime."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    size = info.get("size")
    return f"size:{size}:mtime:{mtime}" if size is not None else None


@dataclass
class ImageFiles:
    """All image files under `url` (a folder/prefix, a glob, or one file), sorted by key."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        skipped = Skipped() if skipped is None else skipped
        for url in expand_urls(self.url):
            for entry in list_files(url, self.storage_options, skipped=skipped):
                if is_image_name(entry.path):
                    yield ImageRef(image_id(entry.uri), entry.uri, version=version_of(entry.info))
                else:
                    skipped[SKIP_EXTENSION] += 1

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        return fetch_uris(refs, self.storage_options, threads=threads,
                          max_bytes=self.max_image_bytes)
