"""Exports of a destination's committed pre-labels for review and training tools.

    coco-instance  COCO instance JSON, masks as compressed RLE; thing segments only for
                   panoptic and semantic runs (all segments for instance runs)
    cvat           the COCO file CVAT imports as mask shapes (iscrowd 1, compressed RLE),
                   images named as CVAT matches task frames; all segments
    labelstudio    Label Studio tasks with brush-mask predictions, plus the labeling
                   config (label_config.xml) beside the tasks file; all segments
    coco-panoptic  a COCO-panoptic dataset in the standard layout under the `out` folder
                   (see `segpipe.tools.export.coco_panoptic`); all segments
    coco-results   the detections list pycocotools' `loadRes` takes; things as coco-instance

`ids_from` (a COCO or COCO-panoptic ground truth) gives the COCO formats its image ids,
matched by base file name, and its category ids, matched by name; `string_ids` writes
our 63-bit ids as strings instead (see `segpipe.tools.export.ids`). `base_names` names
coco-instance images by base name rather than URI (Datumaro refuses absolute names).

In CVAT: create a task whose labels are the category names and whose images are the
source images, then Actions > Upload annotations > "COCO 1.0" with the exported file.
CVAT matches images by file name (without extension), so `cvat` names each image by its
base name, or by its path below `image_root` when one is given; an export whose names
would collide is refused. CVAT keeps `score` only if the label has a `score` attribute.

Only committed shards are exported. See `segpipe.tools.export.images` for how images are named.
"""

from __future__ import annotations

from typing import Any

from segpipe.destination.reader import (
    SegmentRow,
    categories,
    job_settings,
    open_destination,
    require_committed,
)
from segpipe.formats.exports import EXPORT_FORMATS
from segpipe.tools.export.coco_instances import write_coco_instances
from segpipe.tools.export.coco_panoptic import write_coco_panoptic
from segpipe.tools.export.coco_results import write_coco_results
from segpipe.tools.export.ids import ExportIds, base_name, refuse_duplicate_stems
from segpipe.tools.export.images import ImageNaming, refuse_duplicate_cvat_names
from segpipe.tools.export.labelstudio import labeling_config, write_tasks
from segpipe.tools.export.output import open_text, sibling
from segpipe.tools.export.selection import check_selection, select_images

LABEL_CONFIG = "label_config.xml"


def run_export(dst: str, *, format: str, out: str, image_prefix: str | None = None,
               storage_options: dict[str, Any] | None = None, min_score: float | None = None,
               image_root: str | None = None, things_only: bool | None = None,
               from_name: str = "label", to_name: str = "image", order: str = "committed",
               limit: int | None = None, subset: str = "default",
               ids_from: str | None = None, string_ids: bool = False,
               skip_unmatched: bool = False, image_files: str | None = None,
               base_names: bool = False) -> dict[str, Any]:
    """Export DST's committed shards to `out` (a file URL); returns what was written.

    `min_score` drops segments scored below it (unscored semantic segments stay).
    `things_only` overrides the format's choice of segments. `from_name` / `to_name` name
    the BrushLabels and Image tags of the Label Studio config. `order` and `limit` pick the
    images (`segpipe.tools.export.selection`): `order="priority", limit=N` exports the N
    images that most need a reviewer. For coco-panoptic, `out` is a folder, `subset` names
    the dataset's files and `image_files` (copy or link) puts the images beside them.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    check_selection(order, limit)
    _refuse_options_of_other_formats(format, ids_from=ids_from, string_ids=string_ids,
                                     image_files=image_files, base_names=base_names)
    folder = open_destination(dst, storage_options)
    shards = require_committed(folder)
    settings = job_settings(folder)
    task = settings.get("task", "panoptic")
    if things_only is None:
        things_only = format in ("coco-instance", "coco-results") and task != "instance"
    cats = tuple(c for c in categories(folder, shards) if c.isthing or not things_only)
    naming = ImageNaming(image_prefix, image_root)

    def keep(seg: SegmentRow) -> bool:
        return seg.is_thing or not things_only

    images = select_images(folder, shards, order=order, limit=limit, min_score=min_score)

    result: dict[str, Any] = {"format": format, "out": out, "shards": len(shards)}
    if format == "labelstudio":
        with open_text(out, storage_options) as f:
            result.update(write_tasks(f, images(), naming=naming, keep=keep,
                                      from_name=from_name, to_name=to_name))
        config_url = sibling(out, LABEL_CONFIG)
        with open_text(config_url, storage_options) as f:
            f.write(labeling_config(cats, from_name=from_name, to_name=to_name))
        result["label_config"] = config_url
        return result

    ids = ExportIds.load(ids_from, storage_options, string_ids=string_ids,
                         skip_unmatched=skip_unmatched)
    info = {"description": "segpipe pre-labels", "source": folder.url, "task": task,
            "model": settings.get("model")}
    if format == "coco-panoptic":
        result.update(write_coco_panoptic(
            folder, open_destination(out, storage_options), images, categories=cats, keep=keep,
            ids=ids, subset=subset, image_files=image_files,
            filtered=bool(things_only) or min_score is not None, info=info,
            storage_options=storage_options))
        return result
    result["skipped"] = ids.check(images(segments=False), cats)
    if format == "coco-results":
        with open_text(out, storage_options) as f:
            result.update(write_coco_results(f, images(), keep=keep, ids=ids))
        return result
    if format == "coco-instance":
        file_name = base_name if base_names else naming.uri
        if base_names:
            refuse_duplicate_stems(images(segments=False), ids, "coco-instance --base-names")
    else:
        file_name = naming.cvat_name
        refuse_duplicate_cvat_names(images(segments=False), naming)
    with open_text(out, storage_options) as f:
        result.update(write_coco_instances(
            f, images=images, categories=cats, keep=keep, file_name=file_name,
            iscrowd=1 if format == "cvat" else 0, info=info, ids=ids))
    return result


def _refuse_options_of_other_formats(format: str, **options: Any) -> None:
    """An option the format ignores would look applied: refuse it, naming the format."""
    applies = {"ids_from": ("coco-panoptic", "coco-results", "coco-instance", "cvat"),
               "string_ids": ("coco-panoptic", "coco-instance", "cvat"),
               "image_files": ("coco-panoptic",), "base_names": ("coco-instance",)}
    for name, value in options.items():
        if value and format not in applies[name]:
            flag = "--images" if name == "image_files" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag} does not apply to {format} "
                             f"(only to {', '.join(applies[name])})")
