"""CVAT's "COCO 1.0" export: `images`, `annotations` and `categories`, masks as RLE.

CVAT writes masks as RLE (`iscrowd: 1`, uncompressed `counts` lists; compressed strings are
read too) and polygons as point lists; pycocotools decodes all three. Images are matched by
`file_name`: a path below `--image-root`, a URI, or a unique base name. CVAT exports a task's
every image, so each listed image is a review: one without annotations had all removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segpipe.review.reviewed import ImportBatch, ReviewedImage, ReviewedMask, ReviewImportError
from segpipe.review.targets import Targets, parse_json

SOURCE = "cvat"


def load(data: bytes, where: str, targets: Targets) -> ImportBatch:
    doc = parse_json(data, where)
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise ReviewImportError(f"{where}: not a COCO 1.0 file (needs images, annotations "
                                "and categories lists)")
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in doc["images"]}
    for ann in doc["annotations"]:
        if ann.get("image_id") not in by_image:
            raise ReviewImportError(f"{where}: annotation {ann.get('id')} is of image "
                                    f"{ann.get('image_id')}, which the file does not list")
        by_image[ann["image_id"]].append(ann)
    images = []
    for image in doc["images"]:
        item = f"image {image['file_name']}"
        target = targets.find(image["file_name"], where=f"{where}: {item}")
        height, width = target.height, target.width
        if (image.get("height"), image.get("width")) != (height, width):
            raise ReviewImportError(f"{where}: {item} is {image.get('width')}x"
                                    f"{image.get('height')} but {target.image_uri} is "
                                    f"{width}x{height}")
        masks = []
        for ann in by_image[image["id"]]:
            if ann.get("category_id") not in names:
                raise ReviewImportError(f"{where}: annotation {ann.get('id')} has category "
                                        f"{ann.get('category_id')}, which the file does not list")
            mask = _decode(ann.get("segmentation"), height, width,
                           f"{where}: {item}, annotation {ann.get('id')}")
            masks.append(ReviewedMask(str(names[ann["category_id"]]), mask))
        images.append(ReviewedImage(target, item, tuple(masks)))
    return ImportBatch(SOURCE, tuple(images))


def _decode(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """A boolean mask from COCO RLE (uncompressed or compressed) or polygons."""
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if list(size or []) != [height, width]:
            raise ReviewImportError(f"{where}: RLE size {size} differs from the image's "
                                    f"[{height}, {width}]")
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise ReviewImportError(f"{where}: RLE counts cover {sum(counts)} pixels, "
                                        f"not {height * width}")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        else:
            raise ReviewImportError(f"{where}: RLE counts must be a list or a string")
    elif isinstance(segmentation, list) and segmentation:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        raise ReviewImportError(f"{where}: no mask (segmentation is {segmentation!r})")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as exc:  # noqa: BLE001 - pycocotools raises bare errors on bad counts
        raise ReviewImportError(f"{where}: RLE does not decode: {exc!r}") from exc
