"""A COCO-panoptic dataset in the standard layout, as Datumaro, detectron2 and panopticapi
read it:

    OUT/annotations/panoptic_<subset>.json
    OUT/annotations/panoptic_<subset>/<image stem>.png
    OUT/images/<subset>/<image base name>          only with image_files="copy" or "link"

`images[].file_name` is the image's base name and `annotations[].file_name` its stem with
`.png`, as in COCO's own panoptic files (detectron2 finds an image by that stem; Datumaro
wants both the `annotations/` names and `images/<subset>/`, which detectron2 takes as its
`image_root`). Base names must therefore be unique in DST, and plain (letters, digits,
`._=+-`): anything else is refused, naming the image, before anything is written.

The JSON is written last, published whole once every PNG has landed; a failed export
leaves no JSON, so no reader takes the folder for a dataset. PNGs are DST's own bytes,
except when segments are left out (`--min-score`, `--things-only`): their pixels become
void (0), since panopticapi refuses an id in a PNG that the JSON does not list.
Images are copied as stored (`copy`, any storage) or symlinked (`link`, local only).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from segpipe.destination.reader import AnnotatedImage, SegmentRow
from segpipe.formats import coco
from segpipe.io.storage import Folder, ParallelWrites, check_key, filesystem, is_local_url
from segpipe.labels import Category
from segpipe.tools.export.coco_instances import write_head_and_images
from segpipe.tools.export.ids import ExportIds, base_name, refuse_duplicate_stems
from segpipe.tools.export.output import JsonArrayWriter
from segpipe.tools.source_images import read_source_bytes

IMAGE_FILES = ("copy", "link")
WRITE_THREADS = 8


def dataset_keys(subset: str) -> tuple[str, str, str]:
    """The JSON key, the PNG folder and the image folder of a subset, relative to OUT."""
    check_key(f"panoptic_{subset}")
    return (f"annotations/panoptic_{subset}.json", f"annotations/panoptic_{subset}",
            f"images/{subset}")


def png_name(image: AnnotatedImage) -> str:
    return posixpath.splitext(base_name(image))[0] + ".png"


def write_coco_panoptic(dst: Folder, out: Folder, images: Callable[..., Iterable[AnnotatedImage]],
                        *, categories: tuple[Category, ...], keep: Callable[[SegmentRow], bool],
                        ids: ExportIds, subset: str, image_files: str | None, filtered: bool,
                        info: dict[str, Any], storage_options: dict[str, Any] | None = None,
                        ) -> dict[str, Any]:
    """Write the dataset under `out`; `images(segments=...)` is called once per pass.
    `filtered` says whether segments were left out (so PNGs must be redrawn)."""
    if image_files is not None and image_files not in IMAGE_FILES:
        raise ValueError(f"image files must be one of {', '.join(IMAGE_FILES)}, not {image_files!r}")
    json_key, png_folder, image_folder = dataset_keys(subset)
    skipped = ids.check(images(segments=False), categories)
    _check_names(images, ids, out, image_folder, image_files)

    with ParallelWrites(out, WRITE_THREADS) as writes, out.open_atomic(json_key) as f:
        def place_image(image: AnnotatedImage) -> None:
            if image_files == "copy":
                writes.put(f"{image_folder}/{base_name(image)}",
                           read_source_bytes(dst, image, storage_options=storage_options))
            elif image_files == "link":
                _link(image, out.path(f"{image_folder}/{base_name(image)}"))

        written = write_head_and_images(f, info=info, categories=categories, ids=ids,
                                        images=images(segments=False), file_name=base_name,
                                        on_image=place_image)
        f.write(',"annotations":')
        annotations = JsonArrayWriter(f)
        annotations.open()
        segments = 0
        for image in images(segments=True):
            image_id = ids.image_id(image)
            if image_id is None:
                continue
            kept = [s for s in image.segments if keep(s)]
            writes.put(f"{png_folder}/{png_name(image)}", _png(dst, image, kept, filtered))
            annotations.add({"image_id": image_id, "file_name": png_name(image),
                             "segments_info": [_segment_info(s, ids) for s in kept]})
            segments += len(kept)
        annotations.close()
        f.write("}")
        writes.wait()  # every PNG has landed before the JSON is published
    return {"images": written, "annotations": segments, "skipped": skipped,
            "panoptic_json": out.url_of(json_key), "panoptic_folder": out.url_of(png_folder)}


def _check_names(images: Callable[..., Iterable[AnnotatedImage]], ids: ExportIds, out: Folder,
                 image_folder: str, image_files: str | None) -> None:
    """Refuse names that would collide or are no plain key, and links that cannot be made."""
    if image_files == "link" and not out.is_local:
        raise ValueError(f"images can be linked only into a local folder, not {out.url}; "
                         "copy them instead")
    for image in images(segments=False):
        if ids.image_id(image) is None:
            continue
        name = base_name(image)
        try:
            check_key(f"{image_folder}/{name}")
        except ValueError as exc:
            raise ValueError(f"image {image.image_uri}: its file name {name!r} is not a plain "
                             "file name (letters, digits and ._=+-)") from exc
        if image_files == "link" and (image.member is not None or not is_local_url(image.image_uri)):
            raise ValueError(f"image {image.image_uri}: only local files can be linked; "
                             "copy the images instead")
    refuse_duplicate_stems(images(segments=False), ids, "coco-panoptic")


def _link(image: AnnotatedImage, target: str) -> None:
    _, source = filesystem(image.image_uri)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.remove(target)
    os.symlink(os.path.abspath(source), target)


def _png(dst: Folder, image: AnnotatedImage, kept: list[SegmentRow], filtered: bool) -> bytes:
    data = dst.read_bytes(image.panoptic_png)
    if not filtered:
        return data
    id_map = coco.png_to_id_map(data)
    id_map[~np.isin(id_map, [s.segment_id for s in kept])] = 0
    return coco.id_map_to_png(id_map)


def _segment_info(seg: SegmentRow, ids: ExportIds) -> dict[str, Any]:
    info: dict[str, Any] = {"id": seg.segment_id,
                            "category_id": ids.category_id(seg.category_id, seg.category_name),
                            "area": seg.area, "bbox": list(seg.bbox), "iscrowd": 0}
    if seg.score is not None:
        info["score"] = seg.score
    return info
