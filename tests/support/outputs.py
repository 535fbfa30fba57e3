"""Readers the tests use to check a destination against the output contract."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow.dataset as ds
from PIL import Image
from pycocotools import mask as mask_utils

from segpipe.io.storage import Folder


def printed_json(out: str) -> Any:
    """The JSON document a command printed, from captured stdout. The session's Ray prints
    what its raylet reports (a worker that died, in this test or an earlier one) to the
    driver's stdout at any moment, over several lines: the document is the first one that
    starts a line and decodes."""
    decoder = json.JSONDecoder()
    offset = 0
    for line in out.splitlines(keepends=True):
        if line[:1] in "[{":
            try:
                return decoder.raw_decode(out, offset)[0]
            except json.JSONDecodeError:
                pass
        offset += len(line)
    raise AssertionError(f"no JSON document in the output: {out[:2000]!r}")


def read_table(dst: Folder, name: str) -> list[dict[str, Any]]:
    dataset = ds.dataset(dst.path(f"tables/{name}"), filesystem=dst.fs, format="parquet",
                         partitioning="hive")
    return dataset.to_table().to_pylist()


def read_panoptic(dst: Folder) -> dict[str, Any]:
    return json.loads(dst.read_bytes("panoptic.json"))


def read_id_map(dst: Folder, file_name: str) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(dst.read_bytes(f"panoptic/{file_name}"))).convert("RGB"),
                     dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def check_contract(dst: Folder, expected_uris: list[str]) -> dict[str, Any]:
    """Assert the README's output contract; returns the parsed outputs for more checks."""
    coco = read_panoptic(dst)
    images = read_table(dst, "images")
    segments = read_table(dst, "segments")
    errors = read_table(dst, "errors")
    assert errors == []
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(expected_uris)
    assert sorted(r["image_uri"] for r in images) == sorted(expected_uris)
    assert len({i["id"] for i in coco["images"]}) == len(expected_uris)
    assert {a["image_id"] for a in coco["annotations"]} == {i["id"] for i in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    sizes = {i["id"]: (i["height"], i["width"]) for i in coco["images"]}
    rows_by_key = {(r["image_id"], r["segment_id"]): r for r in segments}
    json_keys = set()
    for ann in coco["annotations"]:
        id_map = read_id_map(dst, ann["file_name"])
        assert id_map.shape == sizes[ann["image_id"]]
        info_ids = [s["id"] for s in ann["segments_info"]]
        assert sorted(set(np.unique(id_map)) - {0}) == sorted(info_ids)
        for seg in ann["segments_info"]:
            mask = id_map == seg["id"]
            ys, xs = np.nonzero(mask)
            assert seg["area"] == int(mask.sum())
            assert seg["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                   int(ys.max() - ys.min() + 1)]
            assert seg["category_id"] in category_ids
            row = rows_by_key[(ann["image_id"], seg["id"])]
            assert (row["category_id"], row["area"], list(row["bbox"])) == (
                seg["category_id"], seg["area"], seg["bbox"])
            rle = {"size": row["rle"]["size"], "counts": row["rle"]["counts"].encode()}
            assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert int(mask_utils.area(rle)) == seg["area"]
            json_keys.add((ann["image_id"], seg["id"]))
    assert json_keys == set(rows_by_key)
    return {"coco": coco, "images": images, "segments": segments}
