"""DST's images, found by the names a review tool's export gives them."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from segpipe.destination.reader import AnnotatedImage
from segpipe.io.storage import read_url
from segpipe.review.reviewed import ReviewImportError


class Targets:
    """DST's annotated images by id, URI, path below an image root, and base name."""

    def __init__(self, images: Iterable[AnnotatedImage], image_root: str | None = None) -> None:
        self.by_id: dict[int, AnnotatedImage] = {}
        self.by_uri: dict[str, AnnotatedImage] = {}
        self.by_name: dict[str, list[AnnotatedImage]] = defaultdict(list)
        root = image_root.rstrip("/") + "/" if image_root else None
        self.by_relpath: dict[str, AnnotatedImage] = {}
        for image in images:
            self.by_id[image.image_id] = image
            self.by_uri[image.image_uri] = image
            self.by_name[image.image_uri.rsplit("/", 1)[-1]].append(image)
            if root and image.image_uri.startswith(root):
                self.by_relpath[image.image_uri[len(root):]] = image

    def find(self, name: str, *, where: str) -> AnnotatedImage:
        """The image a URI, a path below the image root, or a unique base name refers to."""
        found = self.by_uri.get(name) or self.by_relpath.get(name.lstrip("/"))
        if found:
            return found
        candidates = self.by_name.get(name.rsplit("/", 1)[-1], [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise ReviewImportError(f"{where}: {name!r} matches {len(candidates)} images of the "
                                    "destination by base name; give --image-root")
        raise ReviewImportError(f"{where}: image {name!r} is not in the destination")


def read_input(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """One input file's bytes, any fsspec URL."""
    try:
        return read_url(url, storage_options)
    except FileNotFoundError as exc:
        raise ReviewImportError(f"{url}: no such file") from exc


def parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReviewImportError(f"{where}: not valid JSON (truncated or another format?): "
                                f"{exc}") from exc
