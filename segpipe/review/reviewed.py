"""What an importer hands on: each reviewed image with the reviewer's masks, not yet resolved
into a panoptic id map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.core.errors import SegpipeError
from segpipe.destination.reader import AnnotatedImage


class ReviewImportError(SegpipeError, ValueError):
    """An export that cannot be imported; the message names the file, task or image."""


@dataclass(frozen=True)
class ReviewedMask:
    category: str  # a name, matched to DST's label set later
    mask: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class ReviewedImage:
    target: AnnotatedImage  # the DST image this review corrects
    item: str  # the task or file in the export, for messages and the reviews table
    masks: tuple[ReviewedMask, ...]  # in the export's order (the overlap rule depends on it)
    reviewer_seconds: float | None = None


@dataclass(frozen=True)
class ImportBatch:
    source: str  # labelstudio | cvat | coco-panoptic
    images: tuple[ReviewedImage, ...]
    not_reviewed: int = 0  # tasks without a counted annotation


def check_size(image: ReviewedImage) -> None:
    """Every mask has the DST image's size."""
    expected = (image.target.height, image.target.width)
    for mask in image.masks:
        if mask.mask.shape != expected:
            raise ReviewImportError(
                f"{image.item}: a {mask.category!r} mask is {mask.mask.shape[1]}x"
                f"{mask.mask.shape[0]} but image {image.target.image_uri} is "
                f"{expected[1]}x{expected[0]}")
