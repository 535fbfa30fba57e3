"""Readers: where images come from. A source lists ImageRefs (streamed, deterministic
order) on the driver and fetches their bytes on the workers."""

from __future__ import annotations

from typing import Any

from segpipe.sources.base import Source
from segpipe.sources.files import ImageFiles

__all__ = ["Source", "ImageFiles", "open_source"]


def open_source(url: str, *, source_format: str | None = None,
                storage_options: dict[str, Any] | None = None, **options: Any) -> Source:
    """The source for `url`; the kind is picked from the URL unless `source_format` says."""
    kind = source_format or "images"
    if kind == "images":
        return ImageFiles(url, storage_options or {})
    raise ValueError(f"unknown --source-format {kind!r}")
