"""Exports of a destination's committed pre-labels for review and training tools.

    coco-instance  COCO instance JSON, masks as compressed RLE; thing segments only for
                   panoptic and semantic runs (all segments for instance runs)
    cvat           the COCO file CVAT imports as mask shapes (iscrowd 1, compressed RLE),
                   images named as CVAT matches task frames; all segments
    labelstudio    Label Studio tasks with brush-mask predictions, plus the labeling
                   config (label_config.xml) beside the tasks file; all segments

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
from segpipe.tools.export.images import ImageNaming, refuse_duplicate_cvat_names
from segpipe.tools.export.labelstudio import labeling_config, write_tasks
from segpipe.tools.export.output import open_text, sibling
from segpipe.tools.export.selection import check_selection, select_images

LABEL_CONFIG = "label_config.xml"


def run_export(dst: str, *, format: str, out: str, image_prefix: str | None = None,
               storage_options: dict[str, Any] | None = None, min_score: float | None = None,
               image_root: str | None = None, things_only: bool | None = None,
               from_name: str = "label", to_name: str = "image", order: str = "committed",
               limit: int | None = None) -> dict[str, Any]:
    """Export DST's committed shards to `out` (a file URL); returns what was written.

    `min_score` drops segments scored below it (unscored semantic segments stay).
    `things_only` overrides the format's choice of segments. `from_name` / `to_name` name
    the BrushLabels and Image tags of the Label Studio config. `order` and `limit` pick the
    images (`segpipe.tools.export.selection`): `order="priority", limit=N` exports the N
    images that most need a reviewer.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
    check_selection(order, limit)
    folder = open_destination(dst, storage_options)
    shards = require_committed(folder)
    settings = job_settings(folder)
    task = settings.get("task", "panoptic")
    if things_only is None:
        things_only = format == "coco-instance" and task != "instance"
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

    file_name = naming.uri if format == "coco-instance" else naming.cvat_name
    if format == "cvat":
        refuse_duplicate_cvat_names(images(segments=False), naming)
    info = {"description": "segpipe pre-labels", "source": folder.url, "task": task,
            "model": settings.get("model")}
    with open_text(out, storage_options) as f:
        result.update(write_coco_instances(
            f, images=images, categories=cats, keep=keep, file_name=file_name,
            iscrowd=1 if format == "cvat" else 0, info=info))
    return result

