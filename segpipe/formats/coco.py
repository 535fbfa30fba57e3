"""The COCO formats, in one place: panoptic id-map PNGs, segments_info, RLE.

A panoptic PNG stores segment id = R + 256*G + 256^2*B; 0 is void.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def id_map_to_png(id_map: np.ndarray) -> bytes:
    ids = id_map.astype(np.uint32)
    rgb = np.stack([ids & 0xFF, (ids >> 8) & 0xFF, (ids >> 16) & 0xFF], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def png_to_id_map(data: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def label_png(label_map: np.ndarray, num_classes: int) -> bytes:
    """A semantic label PNG: 8-bit when the class ids fit, 16-bit otherwise."""
    buf = io.BytesIO()
    if num_classes <= 255:
        Image.fromarray(label_map.astype(np.uint8), "L").save(buf, format="PNG")
    else:
        Image.fromarray(label_map.astype(np.uint16), "I;16").save(buf, format="PNG")
    return buf.getvalue()


def segment_stats(id_map: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """Area and COCO bbox [x, y, w, h] of every non-zero id, in one pass over the pixels."""
    height, width = id_map.shape
    flat = id_map.ravel()
    order = np.argsort(flat, kind="stable")
    ids_sorted = flat[order]
    starts = np.flatnonzero(np.r_[True, ids_sorted[1:] != ids_sorted[:-1]])
    ys, xs = np.divmod(order, width)
    y0 = np.minimum.reduceat(ys, starts)
    y1 = np.maximum.reduceat(ys, starts)
    x0 = np.minimum.reduceat(xs, starts)
    x1 = np.maximum.reduceat(xs, starts)
    counts = np.diff(np.r_[starts, flat.size])
    stats: dict[int, tuple[int, list[int]]] = {}
    for i, start in enumerate(starts):
        seg = int(ids_sorted[start])
        if seg == 0:
            continue
        bbox = [int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)]
        stats[seg] = (int(counts[i]), bbox)
    return stats


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean mask, counts as a str (JSON- and Parquet-friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]),
                              "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
