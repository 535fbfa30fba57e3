"""Reading a destination's committed outputs: semantic label PNGs, and images that
several runs annotated."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from segpipe.destination.reader import (
    committed_shards,
    iter_images,
    read_id_map,
    read_semantic,
    table_dataset,
)
from segpipe.io.storage import Folder
from tests.support.destinations import annotated
from tests.support.images import write_images

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_semantic_png_has_each_segments_category(tmp_path_factory, tiny_model):
    dst = Folder(str(annotated(tmp_path_factory, tiny_model, "semantic")))
    images = list(iter_images(dst, rle=False))
    assert images and all(i.semantic_png for i in images)
    labeled = 0
    for image in images:
        labels, void = read_semantic(dst, image)
        ids = read_id_map(dst, image)
        assert labels.shape == ids.shape == (image.height, image.width)
        expected = np.full(ids.shape, void)
        for seg in image.segments:
            expected[ids == seg.segment_id] = seg.category_id
        assert np.array_equal(labels, expected)
        assert set(np.unique(ids)) - {0} == {s.segment_id for s in image.segments}
        labeled += int((labels != void).sum())
    assert labeled > 0
    # One segment per category in a semantic run.
    assert all(len({s.category_id for s in i.segments}) == len(i.segments) for i in images)


def test_an_image_of_several_runs_is_read_from_the_latest(tmp_path, tiny_model):
    src, dst = tmp_path / "src", tmp_path / "dst"
    paths = write_images(src, 4, seed=11)
    config = JobConfig(src=str(src), dst=str(dst), model=tiny_model, shard_size=2,
                       num_workers=1, progress=False)
    annotate(config)
    # New content under the same URI: the next incremental run annotates it again.
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
        paths[1])
    annotate(config.replace(incremental=True))

    folder = Folder(str(dst))
    assert {run for run, _ in committed_shards(folder)} == {"00001", "00002"}
    rows = table_dataset(folder, "images").to_table(columns=["image_id", "run", "status"]).to_pylist()
    latest: dict[int, str] = {}
    for row in rows:
        if row["status"] == "ok":
            latest[row["image_id"]] = max(latest.get(row["image_id"], ""), row["run"])
    assert len(rows) > len(latest), "some image is in both runs"
    images = list(iter_images(folder))
    assert sorted(i.image_id for i in images) == sorted(latest)
    assert all(i.run_id == latest[i.image_id] for i in images)
    changed = next(i for i in images if i.image_uri == str(paths[1]))
    assert (changed.run_id, changed.width, changed.height) == ("00002", 40, 30)
