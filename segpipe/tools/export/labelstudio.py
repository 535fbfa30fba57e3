"""Label Studio tasks with brush-mask predictions, and the labeling config they fit.

One task per image: `{"data": {"image": URI, "segpipe_image_id": "..."},
"predictions": [{"model_version", "score", "result": [...]}]}`, one `brushlabels` result
per segment. The prediction's score is the image's review priority (in [0, 1], higher:
review first; Label Studio sorts and samples tasks by it, so sort by prediction score
descending), or, for destinations written before priorities existed, the mean of its
segments' scores (left out when there are none, as in semantic runs). The image
id is a string because the Label Studio UI is JavaScript, whose numbers lose 63-bit ints.

Object-store URIs (`s3://`, `gs://`) load in Label Studio once the project has a cloud
storage connected for that bucket (it signs the URLs); `image_prefix` gives HTTP URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any
from xml.sax.saxutils import quoteattr

import numpy as np

from segpipe.destination.reader import AnnotatedImage, SegmentRow
from segpipe.formats import coco
from segpipe.formats.brush import encode_mask
from segpipe.formats.colors import hex_color
from segpipe.labels import Category
from segpipe.tools.export.images import ImageNaming
from segpipe.tools.export.output import JsonArrayWriter


def write_tasks(out: IO[str], images: Iterable[AnnotatedImage], *, naming: ImageNaming,
                keep: Any, from_name: str, to_name: str) -> dict[str, int]:
    tasks = JsonArrayWriter(out)
    tasks.open()
    results = 0
    for image in images:
        segments = [s for s in image.segments if keep(s)]
        task = to_task(image, segments, naming=naming, from_name=from_name, to_name=to_name)
        results += len(task["predictions"][0]["result"])
        tasks.add(task)
    tasks.close()
    return {"images": tasks.count, "annotations": results}


def to_task(image: AnnotatedImage, segments: list[SegmentRow], *, naming: ImageNaming,
            from_name: str, to_name: str) -> dict[str, Any]:
    result = [_result(image, seg, from_name, to_name) for seg in segments]
    prediction: dict[str, Any] = {"model_version": _model_version(image), "result": result}
    scores = [s.score for s in segments if s.score is not None]
    if image.review_priority is not None:
        prediction["score"] = round(float(image.review_priority), 6)
    elif scores:
        prediction["score"] = round(float(np.mean(scores)), 6)
    data = {"image": naming.uri(image), "segpipe_image_id": str(image.image_id)}
    return {"data": data, "predictions": [prediction]}


def _result(image: AnnotatedImage, seg: SegmentRow, from_name: str,
            to_name: str) -> dict[str, Any]:
    assert seg.rle is not None, "segments must be read with their RLE"
    mask = coco.decode_rle(seg.rle).astype(bool)
    item: dict[str, Any] = {
        "id": f"seg{seg.segment_id}", "type": "brushlabels", "from_name": from_name,
        "to_name": to_name, "original_width": image.width, "original_height": image.height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [seg.category_name]},
    }
    if seg.score is not None:
        item["score"] = seg.score
    return item


def _model_version(image: AnnotatedImage) -> str:
    model = image.model or "segpipe"
    return f"{model}@{image.model_revision}" if image.model_revision else model


def labeling_config(categories: Iterable[Category], *, from_name: str, to_name: str) -> str:
    """The `<View>` config whose BrushLabels carry every category, in its color."""
    labels = "\n".join(
        f"    <Label value={quoteattr(c.name)} background={quoteattr(hex_color(c.color))}/>"
        for c in categories)
    return (f'<View>\n  <Image name={quoteattr(to_name)} value="$image" zoom="true"/>\n'
            f"  <BrushLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n"
            f"{labels}\n  </BrushLabels>\n</View>\n")
