"""A COCO-panoptic folder as training examples.

An example holds where its image and its PNG live and what its segments are; pixels and
masks are read and decoded per batch, never held for the whole dataset, so large images do
not exhaust memory (each batch's masks exist only at the model's input size).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from fsspec.core import split_protocol
from PIL import Image

from segpipe.destination import layout
from segpipe.formats import coco
from segpipe.io.storage import Folder, read_url, redact_uri
from segpipe.train.config import FinetuneError

PANOPTIC_JSON = "panoptic.json"
PNG_DIR = "panoptic"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class GroundTruthSegment:
    """One labeled segment of an example, as its annotation's segments_info lists it: its id
    in the PNG, its category, whether it is a crowd region."""

    id: int
    category_id: int
    iscrowd: bool

    def to_coco(self) -> dict[str, int]:
        return {"id": self.id, "category_id": self.category_id, "iscrowd": int(self.iscrowd)}


@dataclass(frozen=True)
class Example:
    """One image of the dataset: its URI, its PNG's URL and its segments."""

    image_id: int
    name: str  # images[].file_name, as the dataset gives it
    image_uri: str
    png_url: str
    segments: tuple[GroundTruthSegment, ...]


@dataclass(frozen=True)
class Dataset:
    url: str
    categories: list[dict[str, Any]]
    examples: list[Example]


def dataset_root(url: str, storage_options: dict[str, Any]) -> tuple[Folder, str, str]:
    """(folder, its JSON key, its PNG folder key): a COCO-panoptic folder, or a destination's
    reviewed labels."""
    folder = Folder(url, storage_options)
    if folder.exists(PANOPTIC_JSON):
        return folder, PANOPTIC_JSON, PNG_DIR
    if folder.exists(layout.REVIEWED_PANOPTIC):
        return folder, layout.REVIEWED_PANOPTIC, layout.REVIEWED_PNG_DIR
    raise FinetuneError(f"{redact_uri(url)}: no {PANOPTIC_JSON} and no "
                        f"{layout.REVIEWED_PANOPTIC}: not a COCO-panoptic dataset or a "
                        "destination with imported reviews")


def read_dataset(url: str, storage_options: dict[str, Any] | None = None) -> Dataset:
    """Every annotated image of the dataset at `url`, in image id order."""
    options = storage_options or {}
    folder, json_key, png_dir = dataset_root(url, options)
    where = redact_uri(folder.url_of(json_key))
    try:
        document = folder.read_json(json_key)
        categories = list(document["categories"])
        images = {int(i["id"]): i for i in document["images"]}
        annotations = document["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FinetuneError(f"{where}: not a COCO-panoptic file ({exc!r})") from exc
    if not categories:
        raise FinetuneError(f"{where}: has no categories")
    known = {int(c["id"]) for c in categories}
    examples = []
    for annotation in annotations:
        image = images.get(int(annotation["image_id"]))
        if image is None:
            raise FinetuneError(f"{where}: annotation {annotation.get('file_name')!r} names "
                                f"image id {annotation['image_id']}, which is not in images")
        segments = tuple(GroundTruthSegment(int(s["id"]), int(s["category_id"]),
                                            bool(s.get("iscrowd", 0)))
                         for s in annotation.get("segments_info", []))
        unknown = {s.category_id for s in segments} - known
        if unknown:
            raise FinetuneError(f"{where}: image {image['file_name']!r} has segments of "
                                f"categories {sorted(unknown)}, which are not in categories")
        examples.append(Example(
            image_id=int(image["id"]), name=str(image["file_name"]),
            image_uri=image_uri(folder, str(image["file_name"])),
            png_url=folder.url_of(f"{png_dir}/{annotation['file_name']}"), segments=segments))
    if not examples:
        raise FinetuneError(f"{where}: has no annotations")
    examples.sort(key=lambda e: e.image_id)
    return Dataset(folder.url, categories, examples)


def image_uri(folder: Folder, file_name: str) -> str:
    """A URI (any fsspec filesystem) or absolute path as it is; else relative to images/."""
    protocol, _ = split_protocol(file_name)
    if protocol or file_name.startswith("/"):
        return file_name
    return folder.url_of(f"{IMAGES_DIR}/{file_name}")


def split(examples: list[Example], val_fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held out): an image is held out by a hash of its file name, so the split is
    the same on every run and an image keeps its side as the dataset grows."""
    if val_fraction <= 0:
        return examples, []
    held = [e for e in examples if _unit(e.name) < val_fraction]
    if not held and len(examples) > 1:
        held = [min(examples, key=lambda e: _unit(e.name))]
    train = [e for e in examples if e not in held]
    if not train:
        raise FinetuneError(f"--val-fraction {val_fraction} leaves no image to train on")
    return train, held


def _unit(name: str) -> float:
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / float(1 << 48)


def load_example(example: Example, storage_options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, segment id map) at the image's own size."""
    try:
        with Image.open(io.BytesIO(read_url(example.image_uri, storage_options))) as img:
            image = np.asarray(img.convert("RGB"))
        ids = coco.png_to_id_map(read_url(example.png_url, storage_options))
    except FinetuneError:
        raise
    except Exception as exc:
        raise FinetuneError(f"image {redact_uri(example.image_uri)}: could not read it or its "
                            f"panoptic PNG: {exc}") from exc
    if ids.shape != image.shape[:2]:
        raise FinetuneError(f"image {redact_uri(example.image_uri)}: its panoptic PNG is "
                            f"{ids.shape[1]}x{ids.shape[0]}, the image "
                            f"{image.shape[1]}x{image.shape[0]}")
    return image, ids
