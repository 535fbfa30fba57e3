"""Incremental runs: what a destination has already seen, and what a newer run replaced."""

from __future__ import annotations

from collections.abc import Callable

from segpipe.records import ImageRef
from segpipe.storage import Folder


def seen_filter(dst: Folder) -> Callable[[ImageRef], bool]:
    """A predicate that is true for images already annotated at `dst` with the same content."""
    return lambda ref: False


def superseded_image_ids(dst: Folder) -> set[int]:
    """Image ids whose rows a later run replaced (the same URI with new content)."""
    return set()
