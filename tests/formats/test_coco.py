"""The COCO-panoptic PNG codec: segment id = R + 256 G + 256^2 B, 0 void."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from segpipe.formats.coco import id_map_to_png, png_to_id_map

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

