"""Image files under a prefix or glob, on any fsspec filesystem."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import split_protocol

from segpipe.identity import image_id
from segpipe.records import ImageFailure, ImageRef
from segpipe.sources.base import fetch_concurrently
from segpipe.storage import filesystem

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
    """All image files under `url` (a folder/prefix, or a glob), sorted by path."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def _uri(self, path: str) -> str:
        protocol, _ = split_protocol(self.url)
        return f"{protocol}://{path}" if protocol and protocol not in ("file", "local") else path

    def list_images(self) -> Iterator[ImageRef]:
        fs, path = filesystem(self.url, self.storage_options)
        if any(ch in path for ch in "*?["):
            found = fs.glob(path, detail=True)
        else:
            found = fs.find(path, detail=True)
        # fsspec returns a dict keyed by path; sort so the plan does not depend on listing order.
        for name in sorted(found):
            info = found[name]
            if info.get("type", "file") != "file" or not is_image_name(name):
                continue
            uri = self._uri(name)
            yield ImageRef(image_id(uri), uri, version=version_of(info))

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Iterator[tuple[ImageRef, bytes | ImageFailure]]:
        fs, _ = filesystem(self.url, self.storage_options)
        return fetch_concurrently(refs, lambda ref: fs.cat_file(split_protocol(ref.uri)[1]), threads=threads)
