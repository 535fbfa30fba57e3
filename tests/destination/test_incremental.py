"""Scheduled enrichment: three runs over a growing prefix, one image replaced."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from segpipe.app.annotate import annotate
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.destination.reader import table_dataset
from segpipe.io.storage import Folder
from tests.support.images import write_images
from tests.support.outputs import printed_json, read_panoptic, read_table

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_three_runs_over_a_growing_prefix(tmp_path, tiny_model, capsys):
    src = tmp_path / "src"
    paths = write_images(src, 4, seed=10)
    config = JobConfig(src=str(src), dst=str(tmp_path / "dst"), model=tiny_model, shard_size=2,
                       num_workers=1, incremental=True, progress=False)
    dst = Folder(config.dst)

    first = annotate(config)
    assert (first["run_id"], first["images"]) == ("00001", 4)

    write_images(tmp_path / "more", 3, seed=11)
    for p in sorted((tmp_path / "more").iterdir()):
        p.rename(src / f"new-{p.name}")
    second = annotate(config)
    assert (second["run_id"], second["images"]) == ("00002", 3)

    # Replace one image's content (same URI): only it is annotated again.
    time.sleep(0.01)
    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(paths[0])
    third = annotate(config)
    assert (third["run_id"], third["images"]) == ("00003", 1)
    nothing_new = annotate(config)
    assert (nothing_new["run_id"], nothing_new["images"]) == ("00004", 0)

    images = read_table(dst, "images")  # all runs, read as one dataset
    assert len(images) == 8
    uris = sorted(str(p) for p in src.iterdir())
    # Once per content version: the replaced image has two rows, every other image one.
    counts = {u: sum(r["image_uri"] == u for r in images) for u in uris}
    assert counts == {u: 2 if u == str(paths[0]) else 1 for u in uris}
    replaced = [r for r in images if r["image_uri"] == str(paths[0])]
    assert {r["run_id"] for r in replaced} == {"00001", "00003"}
    assert len({r["content_hash"] for r in replaced}) == 2

    superseded = read_table(dst, "superseded")
    assert [(r["image_uri"], r["run_id"], r["superseded_by_run_id"]) for r in superseded] == [
        (str(paths[0]), "00001", "00003")]

    coco = read_panoptic(dst)
    assert sorted(i["file_name"] for i in coco["images"]) == uris  # each image once: latest
    latest = next(a for a in coco["annotations"] if a["image_id"] == replaced[0]["image_id"])
    assert latest["file_name"].startswith("00003/")
    assert (40, 50) == next((i["height"], i["width"]) for i in coco["images"]
                            if i["file_name"] == str(paths[0]))

    segments = table_dataset(dst, "segments").to_table().to_pylist()
    assert {s["run"] for s in segments} <= {"00001", "00002", "00003"}

    assert main(["runs", config.dst, "--json"]) == 0
    runs = printed_json(capsys.readouterr().out)
    assert [(r["run_id"], r["images"], r["status"]) for r in runs] == [
        ("00001", 4, "complete"), ("00002", 3, "complete"), ("00003", 1, "complete"),
        ("00004", 0, "complete")]
    assert all(r["model"] == tiny_model and r["incremental"] for r in runs)
