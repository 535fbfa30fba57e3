"""The COCO formats, in one place: panoptic id-map PNGs, segments_info, RLE.

A panoptic PNG stores segment id = R + 256*G + 256^2*B; 0 is void.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# zlib level of the PNGs written: an id map is flat regions that level 1 already packs tight
# (a 1920x1080 map: about 45 KB, against 10 KB from Pillow at its default 6), in a fraction
# of the time.
PNG_COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def id_map_to_png(id_map: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of the ids. Written here rather than by Pillow: Pillow tries five
    row filters on every row of an RGB image, which costs more than the compression and
    gains nothing on flat regions; rows here are unfiltered, and zlib releases the GIL."""
    ids = id_map.astype(np.uint32, copy=False)
    height, width = ids.shape
    rows = np.zeros((height, 1 + 3 * width), np.uint8)  # each row: filter type 0, then RGB
    rgb = rows[:, 1:].reshape(height, width, 3)
    if ids.size and ids.max() < 256:  # nearly every image: G and B stay 0, one pass fills R
        rgb[..., 0] = ids
    else:
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = ids, ids >> 8, ids >> 16  # uint8 keeps the low byte
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolor
    return b"".join([PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", zlib.compress(rows.data, PNG_COMPRESS_LEVEL)),
                     _png_chunk(b"IEND", b"")])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_to_id_map(data: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def label_png(label_map: np.ndarray, num_classes: int) -> bytes:
    """A semantic label PNG: 8-bit when the class ids fit, 16-bit otherwise."""
    buf = io.BytesIO()
    if num_classes <= 255:
        Image.fromarray(label_map.astype(np.uint8), "L").save(
            buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        Image.fromarray(label_map.astype(np.uint16), "I;16").save(
            buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def id_runs(id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The id map as runs in column-major order, COCO RLE's order: each run's id, start
    (a pixel index) and length. A map has few runs next to its pixels, so per-segment work
    done on runs (areas, boxes, RLE) costs little at any image size."""
    flat = np.asarray(id_map).ravel(order="F")
    if flat.size == 0:
        empty = np.zeros(0, np.int64)
        return flat[:0], empty, empty
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    return flat[starts], starts, np.diff(np.r_[starts, flat.size])


Runs = tuple[np.ndarray, np.ndarray, np.ndarray]


def segment_stats(id_map: np.ndarray, runs: Runs | None = None) -> dict[int, tuple[int, list[int]]]:
    """Area and COCO bbox [x, y, w, h] of every non-zero id, from the map's runs (`runs`:
    `id_runs(id_map)` when the caller has them already)."""
    height = id_map.shape[0]
    values, starts, lengths = runs if runs is not None else id_runs(id_map)
    ends = starts + lengths - 1  # a run's last pixel
    x0, x1 = starts // height, ends // height
    # A run that crosses into the next column covers the last row of its first column and
    # the first row of its last one.
    crosses = x1 > x0
    y0 = np.where(crosses, 0, starts % height)
    y1 = np.where(crosses, height - 1, ends % height)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    first = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    box = [np.minimum.reduceat(x0[order], first), np.minimum.reduceat(y0[order], first),
           np.maximum.reduceat(x1[order], first), np.maximum.reduceat(y1[order], first)]
    areas = np.add.reduceat(lengths[order], first)
    stats: dict[int, tuple[int, list[int]]] = {}
    for i, start in enumerate(first):
        seg = int(sorted_values[start])
        if seg == 0:
            continue
        bx0, by0, bx1, by1 = (int(b[i]) for b in box)
        stats[seg] = (int(areas[i]), [bx0, by0, bx1 - bx0 + 1, by1 - by0 + 1])
    return stats


def encode_rles(id_map: np.ndarray, segment_ids: list[int],
                runs: Runs | None = None) -> dict[int, dict[str, Any]]:
    """COCO compressed RLE of each segment's mask, as `encode_rle(id_map == id)` gives, from
    one pass over the map's runs instead of one pass over its pixels per segment."""
    height, width = id_map.shape
    values, starts, lengths = runs if runs is not None else id_runs(id_map)
    total = height * width
    out: dict[int, dict[str, Any]] = {}
    for seg in segment_ids:
        mine = np.flatnonzero(values == seg)
        seg_starts, seg_lengths = starts[mine], lengths[mine]
        ends = seg_starts + seg_lengths
        # Runs alternate, zeros first (possibly none), then the zeros after the last run.
        zeros = seg_starts - np.r_[0, ends[:-1]]
        counts = np.column_stack([zeros, seg_lengths]).ravel().tolist()
        tail = total - (int(ends[-1]) if len(ends) else 0)
        if tail or not counts:
            counts.append(tail)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        out[seg] = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    return out


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a boolean mask, counts as a str (JSON- and Parquet-friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": list(rle["size"]),
                              "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
