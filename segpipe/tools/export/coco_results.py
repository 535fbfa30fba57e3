"""The results file that pycocotools' `COCO.loadRes` takes and `COCOeval` scores: a plain
JSON list of detections, one per segment,

    {"image_id", "category_id", "segmentation": {"size", "counts"}, "score", "bbox", "area"}

with the ground truth's image and category ids when `--ids-from` names it (`loadRes`
refuses a result whose image the ground truth lacks). Masks are COCO compressed RLE.
COCOeval ranks detections by score, so unscored segments (semantic runs) get 1.0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import IO, Any

from segpipe.destination.reader import AnnotatedImage, SegmentRow
from segpipe.tools.export.ids import ExportIds
from segpipe.tools.export.output import JsonArrayWriter

UNSCORED = 1.0


def write_coco_results(out: IO[str], images: Iterable[AnnotatedImage], *,
                       keep: Callable[[SegmentRow], bool], ids: ExportIds) -> dict[str, int]:
    results = JsonArrayWriter(out)
    results.open()
    exported = 0
    for image in images:
        image_id = ids.image_id(image)
        if image_id is None:
            continue
        exported += 1
        for seg in image.segments:
            if keep(seg):
                results.add(_result(image_id, seg, ids))
    results.close()
    return {"images": exported, "annotations": results.count}


def _result(image_id: int | str, seg: SegmentRow, ids: ExportIds) -> dict[str, Any]:
    assert seg.rle is not None, "segments must be read with their RLE"
    return {"image_id": image_id,
            "category_id": ids.category_id(seg.category_id, seg.category_name),
            "segmentation": {"size": list(seg.rle["size"]), "counts": seg.rle["counts"]},
            "score": UNSCORED if seg.score is None else seg.score,
            "bbox": list(seg.bbox), "area": seg.area}
