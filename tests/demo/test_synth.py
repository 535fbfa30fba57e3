"""Synthetic scenes: deterministic by seed, and their COCO-panoptic ground truth is exact."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segpipe.demo.synth import CATEGORIES, MAX_SIDE, MIN_SIDE, make_scene, write_scenes
from segpipe.io.storage import filesystem

COUNT = 6


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(str(root), COUNT, seed=7)
    return root


def test_same_seed_gives_the_same_bytes(scenes: Path, tmp_path: Path) -> None:
    write_scenes(str(tmp_path), COUNT, seed=7)
    again = files_under(tmp_path)
    assert again == files_under(scenes)
    assert len(again) == 2 * COUNT + 1


def test_a_scene_does_not_depend_on_the_count(scenes: Path, tmp_path: Path) -> None:
    write_scenes(str(tmp_path), 2, seed=7)
    name = "images/scene-7-000001.png"
    assert (tmp_path / name).read_bytes() == (scenes / name).read_bytes()


def test_different_seeds_differ(scenes: Path, tmp_path: Path) -> None:
    write_scenes(str(tmp_path), COUNT, seed=8)
    ours, theirs = files_under(scenes), files_under(tmp_path)
    assert ours["panoptic.json"] != theirs["panoptic.json"]
    assert set(ours.values()).isdisjoint(v for k, v in theirs.items() if k.startswith("images/"))


def decode_ids(png: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_segments_match_the_png(scenes: Path) -> None:
    doc = json.loads((scenes / "panoptic.json").read_text())
    categories = {c["id"]: c for c in doc["categories"]}
    assert doc["categories"] == CATEGORIES
    images = {image["id"]: image for image in doc["images"]}
    assert len(doc["annotations"]) == COUNT
    for ann in doc["annotations"]:
        image = images[ann["image_id"]]
        ids = decode_ids((scenes / "panoptic" / ann["file_name"]).read_bytes())
        with Image.open(scenes / "images" / image["file_name"]) as picture:
            assert picture.size == (image["width"], image["height"])
        assert ids.shape == (image["height"], image["width"])
        assert MIN_SIDE <= min(ids.shape) and max(ids.shape) <= MAX_SIDE
        segments = ann["segments_info"]
        # Every pixel belongs to a segment; ids are 1..N, as the pipeline writes them.
        assert sorted(np.unique(ids).tolist()) == [s["id"] for s in segments]
        assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
        for s in segments:
            mask = np.asfortranarray((ids == s["id"]).astype(np.uint8))
            rle = mask_utils.encode(mask)
            assert s["area"] == int(mask_utils.area(rle))
            assert s["bbox"] == mask_utils.toBbox(rle).astype(int).tolist()
            assert s["category_id"] in categories and s["iscrowd"] == 0
        kinds = [categories[s["category_id"]]["isthing"] for s in segments]
        assert kinds.count(0) >= 1 and kinds.count(1) >= 2


def test_stuff_appears_once_per_image() -> None:
    # Stuff is one segment per class and image, as panoptic ground truth requires.
    stuff = {c["id"] for c in CATEGORIES if not c["isthing"]}
    for index in range(20):
        labels = [s["category_id"] for s in make_scene(11, index).segments]
        stuff_labels = [c for c in labels if c in stuff]
        assert len(stuff_labels) == len(set(stuff_labels))


def test_shapes_of_one_class_never_touch() -> None:
    # Neighbouring pixels (right and down) never hold two instances of one thing class.
    things = {c["id"] for c in CATEGORIES if c["isthing"]}
    for index in range(20):
        scene = make_scene(12, index)
        category = {s["id"]: s["category_id"] for s in scene.segments}
        pairs = set()
        for a, b in ((scene.ids[:, :-1], scene.ids[:, 1:]), (scene.ids[:-1], scene.ids[1:])):
            edge = a != b
            pairs |= set(zip(a[edge].tolist(), b[edge].tolist(), strict=True))
        for a, b in pairs:
            assert not (category[a] == category[b] and category[a] in things), (index, a, b)


def test_writes_to_object_storage(bucket: str) -> None:
    write_scenes(f"s3://{bucket}/scenes", 2, seed=7)
    fs, _ = filesystem(f"s3://{bucket}")
    names = sorted(fs.find(f"{bucket}/scenes"))
    assert names == [f"{bucket}/scenes/{key}" for key in (
        "images/scene-7-000000.png", "images/scene-7-000001.png", "panoptic.json",
        "panoptic/scene-7-000000.png", "panoptic/scene-7-000001.png")]
    local = make_scene(7, 1)
    remote = decode_ids(fs.cat_file(f"{bucket}/scenes/panoptic/scene-7-000001.png"))
    assert np.array_equal(remote, local.ids)
