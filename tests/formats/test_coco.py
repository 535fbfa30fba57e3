"""The COCO-panoptic PNG codec: segment id = R + 256 G + 256^2 B, 0 void."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segpipe.formats.coco import (
    encode_rle,
    encode_rles,
    id_map_to_png,
    png_to_id_map,
    segment_stats,
)

# Ids that fill each byte of the encoding, and carry across bytes.
IDS = np.array([[0, 1, 255, 256], [257, 65535, 65536, 2**24 - 1]], dtype=np.int64)


def test_ids_round_trip_through_all_three_channels():
    png = id_map_to_png(IDS)
    assert np.array_equal(png_to_id_map(png), IDS)


def test_the_png_holds_ids_as_coco_panoptic_defines_them():
    rgb = np.asarray(Image.open(io.BytesIO(id_map_to_png(IDS))))
    assert rgb.dtype == np.uint8 and rgb.shape == (*IDS.shape, 3)
    assert rgb[1, 1].tolist() == [255, 255, 0]  # 65535
    assert rgb[1, 2].tolist() == [0, 0, 1]  # 65536
    r, g, b = (rgb[..., c].astype(np.int64) for c in range(3))
    assert np.array_equal(r + 256 * g + 256**2 * b, IDS)


def test_maps_under_256_ids_give_the_bytes_pillow_reads_back_as_coco_defines_them():
    """Maps whose ids fit in R (nearly all) take a one-channel path; their pixels must be
    what the general encoding gives: R = id, G = B = 0."""
    small = np.array([[0, 1, 2], [255, 7, 0]], dtype=np.int32)
    rgb = np.asarray(Image.open(io.BytesIO(id_map_to_png(small))))
    assert np.array_equal(rgb[..., 0], small) and not rgb[..., 1:].any()
    assert np.array_equal(png_to_id_map(id_map_to_png(small)), small)
    assert png_to_id_map(id_map_to_png(np.zeros((1, 4), np.int32))).tolist() == [[0] * 4]



def _maps() -> list[np.ndarray]:
    """Id maps with runs that start at row 0, end at the last row, span columns, and ids
    that touch only one pixel, fill the map, or are absent."""
    rng = np.random.default_rng(7)
    maps = [rng.integers(0, k, size=(h, w)).astype(np.int32)
            for k, h, w in ((2, 5, 7), (4, 9, 3), (6, 1, 12), (3, 12, 1))]
    blocks = np.zeros((8, 10), np.int32)
    blocks[:, :4], blocks[3:6, 4:], blocks[7, 9] = 1, 2, 3
    return [*maps, blocks, np.full((4, 4), 5, np.int32)]


def test_rles_from_the_runs_equal_one_mask_at_a_time():
    for ids in _maps():
        wanted = [int(i) for i in np.unique(ids) if i] + [99]  # 99: no pixel
        rles = encode_rles(ids, wanted)
        for seg in wanted:
            assert rles[seg] == encode_rle(ids == seg)
            assert np.array_equal(mask_utils.decode({**rles[seg], "counts": rles[seg]["counts"]
                                                     .encode()}), (ids == seg).astype(np.uint8))


def test_areas_and_boxes_from_the_runs_equal_the_pixels():
    for ids in _maps():
        stats = segment_stats(ids)
        assert sorted(stats) == [int(i) for i in np.unique(ids) if i]
        for seg, (area, bbox) in stats.items():
            ys, xs = np.nonzero(ids == seg)
            assert area == len(ys)
            assert bbox == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                            int(ys.max() - ys.min() + 1)]
