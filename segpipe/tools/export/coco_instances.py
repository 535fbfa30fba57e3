"""COCO instance files: `coco-instance` for training and evaluation tools, `cvat` for CVAT.

Both are derived from the segments table: one annotation per segment, its mask as COCO
compressed RLE (`{"size": [h, w], "counts": str}`), its area and bbox from the table.
The file is streamed: images first (one pass over the images tables), then annotations
(one pass over the segments tables), so memory follows one shard.

The CVAT flavour follows CVAT's "COCO 1.0" importer: a segmentation given as compressed
RLE becomes a mask shape, and `iscrowd` is 1, as CVAT itself writes masks. Images are
named as CVAT matches them to task frames (see `ImageNaming.cvat_name`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import IO, Any

from segpipe.destination.reader import AnnotatedImage, SegmentRow
from segpipe.labels import Category
from segpipe.tools.export.ids import ExportIds
from segpipe.tools.export.output import JsonArrayWriter


def write_coco_instances(out: IO[str], *, images: Callable[..., Iterable[AnnotatedImage]],
                         categories: tuple[Category, ...], keep: Callable[[SegmentRow], bool],
                         file_name: Callable[[AnnotatedImage], str], iscrowd: int,
                         info: dict[str, Any], ids: ExportIds | None = None) -> dict[str, int]:
    """Stream one COCO instance JSON. `images(segments=...)` is called once per section,
    without segments for the images section. `ids` gives the image and category ids
    (default: ours); images it has no id for are left out."""
    ids = ids or ExportIds()
    written = write_head_and_images(out, info=info, categories=categories, ids=ids,
                                    images=images(segments=False), file_name=file_name)
    out.write(',"annotations":')
    annotations = JsonArrayWriter(out)
    annotations.open()
    for image in images(segments=True):
        image_id = ids.image_id(image)
        if image_id is None:
            continue
        for seg in image.segments:
            if keep(seg):
                annotations.add(_annotation(annotations.count + 1, image_id, seg, iscrowd,
                                            ids.category_id(seg.category_id, seg.category_name)))
    annotations.close()
    out.write("}")
    return {"images": written, "annotations": annotations.count}


def write_head_and_images(out: IO[str], *, info: dict[str, Any], categories: tuple[Category, ...],
                          ids: ExportIds, images: Iterable[AnnotatedImage],
                          file_name: Callable[[AnnotatedImage], str],
                          on_image: Callable[[AnnotatedImage], None] | None = None) -> int:
    """A COCO file's opening, shared by the instance and panoptic formats: info, licenses,
    categories and the images section, ids as `ids` gives them (images without one are left
    out; `on_image` sees each image written). Returns how many images were written."""
    out.write('{"info":' + json.dumps(info) + ',"licenses":[]')
    out.write(',"categories":' + json.dumps(
        [coco_category(c, ids.category_id(c.id, c.name)) for c in categories]))
    out.write(',"images":')
    section = JsonArrayWriter(out)
    section.open()
    for image in images:
        image_id = ids.image_id(image)
        if image_id is None:
            continue
        section.add({"id": image_id, "file_name": file_name(image),
                     "width": image.width, "height": image.height})
        if on_image is not None:
            on_image(image)
    section.close()
    return section.count


def _annotation(ann_id: int, image_id: int | str, seg: SegmentRow, iscrowd: int,
                category_id: int) -> dict[str, Any]:
    assert seg.rle is not None, "segments must be read with their RLE"
    ann: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": category_id,
           "segmentation": {"size": list(seg.rle["size"]), "counts": seg.rle["counts"]},
           "area": seg.area, "bbox": list(seg.bbox), "iscrowd": iscrowd}
    if seg.score is not None:
        ann["score"] = seg.score
    return ann


def coco_category(c: Category, category_id: int | None = None) -> dict[str, Any]:
    return {"id": c.id if category_id is None else category_id, "name": c.name, "supercategory": c.name, "isthing": int(c.isthing),
            "color": list(c.color)}
