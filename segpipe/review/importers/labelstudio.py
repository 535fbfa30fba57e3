"""Label Studio project exports (JSON): a list of tasks, each with `data` and `annotations`.

A task is matched to DST's image by `data.segpipe_image_id` (our export puts it there; Label
Studio returns it as a string), else by `data.image`. Cancelled annotations are not reviews,
and a task without any other annotation is not reviewed. When a task has several
annotations, the latest one (by `updated_at`, then `created_at`, then id) counts: Label
Studio keeps every submission, and a later one is a reviewer correcting the earlier, so the
latest is the labels the project stands by. Brush masks are decoded by label-studio-sdk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from segpipe.review.reviewed import ImportBatch, ReviewedImage, ReviewedMask, ReviewImportError
from segpipe.review.targets import Targets, parse_json

SOURCE = "labelstudio"


def load(data: bytes, where: str, targets: Targets) -> ImportBatch:
    tasks = parse_json(data, where)
    if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise ReviewImportError(f"{where}: not a Label Studio JSON export (a list of tasks "
                                "with 'data' and 'annotations')")
    images, not_reviewed = [], 0
    for index, task in enumerate(tasks):
        item = f"{where}: task {task.get('id', f'#{index}')}"
        annotation = latest_annotation(task)
        if annotation is None:
            not_reviewed += 1
            continue
        target = _target(task["data"], targets, item)
        masks = tuple(_mask(result, item, target.height, target.width)
                      for result in annotation.get("result", []) if _is_brush(result, item))
        lead_time = annotation.get("lead_time")
        images.append(ReviewedImage(target, item.split(": ", 1)[1], masks,
                                    None if lead_time is None else float(lead_time)))
    return ImportBatch(SOURCE, tuple(images), not_reviewed)


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation that counts: the latest not cancelled, or None."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "",
                                    a.get("created_at") or "", a.get("id") or 0))


def _target(data: dict[str, Any], targets: Targets, item: str) -> Any:
    image_id = data.get("segpipe_image_id")
    if image_id is not None:
        try:
            found = targets.by_id.get(int(image_id))
        except (TypeError, ValueError):
            raise ReviewImportError(f"{item}: segpipe_image_id {image_id!r} is not an id") from None
        if found is None:
            raise ReviewImportError(f"{item}: image {image_id} ({data.get('image')}) is not "
                                    "in the destination")
        return found
    if not isinstance(data.get("image"), str):
        raise ReviewImportError(f"{item}: no segpipe_image_id and no image URI in its data")
    return targets.find(data["image"], where=item)


def _is_brush(result: dict[str, Any], item: str) -> bool:
    """Brush results are masks; relations and the like carry none. Any other region type
    (rectangles, polygons) cannot be a panoptic mask here and is refused, never dropped."""
    kind = result.get("type")
    if kind == "brushlabels":
        return True
    if kind in ("relation", "textarea", "choices", "rating"):
        return False
    raise ReviewImportError(f"{item}: result {result.get('id')!r} is of type {kind!r}; only "
                            "brushlabels masks can be imported")


def _mask(result: dict[str, Any], item: str, height: int, width: int) -> ReviewedMask:
    value = result.get("value") or {}
    where = f"{item}, result {result.get('id')!r}"
    labels = value.get("brushlabels") or []
    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise ReviewImportError(f"{where}: not a brush mask in RLE format")
    if len(labels) != 1:
        raise ReviewImportError(f"{where}: has {len(labels)} labels, not one")
    size = (result.get("original_height"), result.get("original_width"))
    if size != (height, width):
        raise ReviewImportError(f"{where}: the mask is {size[1]}x{size[0]} but the image is "
                                f"{width}x{height}")
    try:
        flat = decode_rle(value["rle"])
    except Exception as exc:  # noqa: BLE001 - the SDK raises bare errors on corrupt bits
        raise ReviewImportError(f"{where}: brush RLE does not decode: {exc!r}") from exc
    if flat.size != height * width * 4:
        raise ReviewImportError(f"{where}: the mask has {flat.size // 4} pixels but the image "
                                f"has {height * width}")
    # RGBA, row-major; the alpha channel is the brush.
    mask = np.asarray(flat).reshape(height, width, 4)[:, :, 3] > 0
    return ReviewedMask(str(labels[0]), mask)
