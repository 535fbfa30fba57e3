"""Which image and category ids an export writes: ours, as strings, or a ground truth's.

COCO tools pair images by id (panopticapi's `pq_compute`, pycocotools' `loadRes`), and
our ids are hashes of the URIs. `--ids-from GT.json` takes the ids of a COCO or
COCO-panoptic file instead, matching its images by base file name
(`images[].file_name`, folders left aside, as COCO files name images) and its
categories by name.

A DST image that the ground truth does not name is an error, listing the first ones,
before anything is written; `skip_unmatched` leaves such images out and counts them.
An image id that a JavaScript program may read (Label Studio's front end, a web viewer)
loses precision past 2**53: `string_ids` writes our ids as JSON strings.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from segpipe.core.errors import SegpipeError
from segpipe.core.identity import duplicate_ids
from segpipe.core.identity import image_id as name_hash
from segpipe.destination.reader import AnnotatedImage
from segpipe.io.storage import read_url
from segpipe.labels import Category

SHOWN = 5  # how many unmatched names an error lists


class GroundTruthMismatch(SegpipeError, ValueError):
    """The ground-truth file and the destination do not name the same images or labels."""


def base_name(image: AnnotatedImage) -> str:
    """The file's base name: of the member for images inside containers, else of the URI."""
    path = image.member if image.member is not None else image.image_uri
    return posixpath.basename(path.split("?", 1)[0])


@dataclass(frozen=True)
class ExportIds:
    """Image and category ids for an export. Without a ground truth, our own ids."""

    image_ids: dict[str, Any] | None = None  # base name -> the ground truth's image id
    category_ids: dict[str, int] | None = None  # category name -> the ground truth's id
    string_ids: bool = False
    skip_unmatched: bool = False
    source: str | None = None

    @classmethod
    def load(cls, ids_from: str | None, storage_options: dict[str, Any] | None = None, *,
             string_ids: bool = False, skip_unmatched: bool = False) -> ExportIds:
        if ids_from is None:
            return cls(string_ids=string_ids)
        if string_ids:
            raise ValueError("--string-ids and --ids-from exclude each other: the ground truth's ids "
                             "are written as it has them")
        document = _read_json(ids_from, storage_options)
        return cls(image_ids=_image_ids(document, ids_from),
                   category_ids={c["name"]: int(c["id"]) for c in document.get("categories", [])},
                   skip_unmatched=skip_unmatched, source=ids_from)

    def image_id(self, image: AnnotatedImage) -> int | str | None:
        """The id to write, or None for an image left out (only after `check`)."""
        if self.image_ids is not None:
            return self.image_ids.get(base_name(image))
        return str(image.image_id) if self.string_ids else image.image_id

    def category_id(self, category_id: int, name: str) -> int:
        if not self.category_ids:
            return category_id
        return self.category_ids[name]

    def check(self, images: Iterable[AnnotatedImage], categories: Iterable[Category]) -> int:
        """Refuse a ground truth that misses categories or images of DST (unless skipping
        images); called before anything is written, so a mismatch leaves nothing.
        Returns how many images will be left out."""
        if self.image_ids is None:
            return 0
        if self.category_ids:
            missing = sorted(c.name for c in categories if c.name not in self.category_ids)
            if missing:
                raise GroundTruthMismatch(
                    f"{self.source} has no categories named {', '.join(missing)}; ids are "
                    "matched by category name")
        unmatched = [image.image_uri for image in images if self.image_id(image) is None]
        if unmatched and not self.skip_unmatched:
            raise GroundTruthMismatch(
                f"{len(unmatched)} image(s) of the destination are not in {self.source} "
                f"(matched by base file name), e.g. {', '.join(unmatched[:SHOWN])}; pass "
                "--skip-unmatched to leave them out")
        return len(unmatched)


def _read_json(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    data = read_url(url, storage_options)
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise GroundTruthMismatch(f"{url} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise GroundTruthMismatch(f"{url} is not a COCO file: it has no `images` list")
    return document


def _image_ids(document: dict[str, Any], url: str) -> dict[str, Any]:
    try:
        pairs = [(posixpath.basename(str(i["file_name"])), i["id"]) for i in document["images"]]
    except (KeyError, TypeError) as exc:
        raise GroundTruthMismatch(f"{url}: every image needs an `id` and a `file_name`") from exc
    repeated = [name for name, n in Counter(name for name, _ in pairs).items() if n > 1]
    if repeated:
        raise GroundTruthMismatch(
            f"{url} names several images {', '.join(sorted(repeated)[:SHOWN])}; images are "
            "matched by base file name, which must be unique")
    return dict(pairs)


def refuse_duplicate_stems(images: Iterable[AnnotatedImage], ids: ExportIds, what: str) -> None:
    """Tools that key items by file name without extension (Datumaro's item ids,
    detectron2's PNG names) would merge two images of one stem: refuse, before writing.
    Names are hashed to 8-byte ids while counting, so memory stays small."""
    repeated = duplicate_ids(name_hash(posixpath.splitext(base_name(image))[0])
                             for image in images if ids.image_id(image) is not None)
    if repeated:
        raise ValueError(f"{what}: {len(repeated)} file name(s) without extension are shared "
                         "by several images of the destination; each must name one image")
