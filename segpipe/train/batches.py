"""Training batches: decode, augment, resize to the model's input, then let the checkpoint's
own image processor build `pixel_values`, `mask_labels` and `class_labels`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from segpipe.io.storage import redact_uri
from segpipe.train.config import FinetuneError
from segpipe.train.dataset import Example, load_example

IGNORE = 255  # the processors' ignore_index: pixels of no segment (void, crowd, unknown)
MAX_SEGMENTS = IGNORE  # segments are renumbered 0..254 so that 255 stays free for void


def input_size(processor: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) the processor resizes an image of this size to."""
    image_processor = getattr(processor, "image_processor", processor)
    size = dict(image_processor.size)
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    short = int(size.get("shortest_edge", min(height, width)))
    scale = short / min(height, width)
    longest = size.get("longest_edge")
    if longest is not None:
        scale = min(scale, int(longest) / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def augment(image: np.ndarray, ids: np.ndarray, rng: random.Random, *, flip: bool,
            scale_jitter: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A random horizontal flip, then a random zoom in or out kept at the same size: zoom in
    crops, zoom out pads (image with its mean color, labels with void)."""
    if flip and rng.random() < 0.5:
        image, ids = image[:, ::-1], ids[:, ::-1]
    low, high = scale_jitter
    scale = rng.uniform(low, high)
    if abs(scale - 1.0) < 1e-3:
        return np.ascontiguousarray(image), np.ascontiguousarray(ids)
    height, width = ids.shape
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = _resize(image, new_h, new_w, Image.Resampling.BILINEAR)
    ids = _resize_ids(ids, new_h, new_w)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    labels = np.zeros((height, width), ids.dtype)
    top, left = rng.randint(0, abs(new_h - height)), rng.randint(0, abs(new_w - width))
    if scale > 1:  # crop a window of the original size
        canvas[:] = image[top:top + height, left:left + width]
        labels[:] = ids[top:top + height, left:left + width]
    else:  # paste the smaller image at a random place
        canvas[top:top + new_h, left:left + new_w] = image
        labels[top:top + new_h, left:left + new_w] = ids
    return canvas, labels


def _resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((width, height), resample))


def _resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour, as segmentation maps must be resized; ids above 2**24 do not occur
    in panoptic PNGs, so int32 through PIL's mode I is exact."""
    return np.asarray(Image.fromarray(ids.astype(np.int32), "I").resize(
        (width, height), Image.Resampling.NEAREST)).astype(ids.dtype)


def instance_map(example: Example, ids: np.ndarray, label_of: dict[int, int]
                 ) -> tuple[np.ndarray, dict[int, int]]:
    """Segment ids renumbered 0..K-1 with void as IGNORE, and each new id's label index.

    Crowd segments and segments of a category the label set drops are void: the model
    learns nothing there rather than something wrong."""
    out = np.full(ids.shape, IGNORE, np.int32)
    classes: dict[int, int] = {}
    for segment in example.segments:
        label = label_of.get(segment.category_id)
        if label is None or segment.iscrowd:
            continue
        mask = ids == segment.id
        if not mask.any():  # vanished in the resize or the crop
            continue
        if len(classes) == MAX_SEGMENTS:
            raise FinetuneError(f"image {redact_uri(example.image_uri)}: more than "
                                f"{MAX_SEGMENTS} segments")
        out[mask] = len(classes)
        classes[len(classes)] = label
    return out, classes


def make_batch(examples: Sequence[Example], processor: Any, label_of: dict[int, int], *,
               family: str, rng: random.Random | None, flip: bool = True,
               scale_jitter: tuple[float, float] = (1.0, 1.0),
               storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model inputs with targets for `examples`; `rng` None means no augmentation."""
    images, maps, classes = [], [], []
    for example in examples:
        image, ids = load_example(example, storage_options or {})
        if rng is not None:
            image, ids = augment(image, ids, rng, flip=flip, scale_jitter=scale_jitter)
        # Resizing the id map before the processor makes its binary masks keeps them at
        # the model's input size: N x H x W of a large image never exists.
        height, width = input_size(processor, *ids.shape)
        image = _resize(np.ascontiguousarray(image), height, width, Image.Resampling.BILINEAR)
        ids = _resize_ids(np.ascontiguousarray(ids), height, width)
        instances, labels = instance_map(example, ids, label_of)
        images.append(image)
        maps.append(instances)
        classes.append(labels)
    kwargs: dict[str, Any] = {"segmentation_maps": maps, "instance_id_to_semantic_id": classes,
                              "ignore_index": IGNORE, "return_tensors": "pt"}
    if family == "oneformer":
        kwargs["task_inputs"] = ["panoptic"] * len(images)
    return dict(processor(images=images, **kwargs))
