"""Any COCO-panoptic folder: a `panoptic.json` with its PNG folder `panoptic/` beside it, or
a `NAME.json` with `NAME/` beside it (COCO's `annotations/panoptic_val2017.json` layout).

Images are matched by `file_name` (a URI, a path below `--image-root`, or a unique base name);
categories by name.
"""

from __future__ import annotations

from typing import Any

from segpipe.formats import coco
from segpipe.review.reviewed import ImportBatch, ReviewedImage, ReviewedMask, ReviewImportError
from segpipe.review.targets import Targets, parse_json, read_input

SOURCE = "coco-panoptic"


def locate(path: str) -> tuple[str, str]:
    """(JSON URL, PNG folder URL) of a COCO-panoptic folder or JSON file."""
    path = path.rstrip("/")
    if path.endswith(".json"):
        return path, path[: -len(".json")]
    return f"{path}/panoptic.json", f"{path}/panoptic"


def load(path: str, targets: Targets, storage_options: dict[str, Any] | None = None
         ) -> ImportBatch:
    json_url, png_dir = locate(path)
    doc = parse_json(read_input(json_url, storage_options), json_url)
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise ReviewImportError(f"{json_url}: not a COCO-panoptic file (needs images, "
                                "annotations and categories lists)")
    names = {c["id"]: c["name"] for c in doc["categories"]}
    files = {image["id"]: image["file_name"] for image in doc["images"]}
    images = []
    for ann in doc["annotations"]:
        if "segments_info" not in ann or "file_name" not in ann:
            raise ReviewImportError(f"{json_url}: annotation of image {ann.get('image_id')} "
                                    "has no segments_info or file_name: not COCO panoptic")
        name = files.get(ann["image_id"])
        if name is None:
            raise ReviewImportError(f"{json_url}: annotation {ann['file_name']} is of image "
                                    f"{ann['image_id']}, which the file does not list")
        item = f"image {name}"
        target = targets.find(name, where=f"{json_url}: {item}")
        png_url = f"{png_dir}/{ann['file_name']}"
        try:
            ids = coco.png_to_id_map(read_input(png_url, storage_options))
        except OSError as exc:
            raise ReviewImportError(f"{png_url}: not a readable PNG: {exc}") from exc
        if ids.shape != (target.height, target.width):
            raise ReviewImportError(f"{png_url}: {item} is {ids.shape[1]}x{ids.shape[0]} but "
                                    f"{target.image_uri} is {target.width}x{target.height}")
        masks = []
        for info in ann["segments_info"]:
            if info.get("category_id") not in names:
                raise ReviewImportError(f"{json_url}: {item}, segment {info.get('id')} has "
                                        f"category {info.get('category_id')}, not listed")
            masks.append(ReviewedMask(str(names[info["category_id"]]), ids == info["id"]))
        images.append(ReviewedImage(target, item, tuple(masks)))
    return ImportBatch(SOURCE, tuple(images))
