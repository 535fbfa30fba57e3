"""Held-out PQ: the held-out images are read once per run, however many epochs score them."""

from __future__ import annotations

import shutil

import torch

from segpipe.demo.synth import write_scenes
from segpipe.model.loading import load_model
from segpipe.train.dataset import read_dataset
from segpipe.train.labels import plan_labels
from segpipe.train.metrics import held_out_pq, read_held_out


def test_held_out_images_are_read_once_and_scored_each_time_alike(tmp_path):
    scenes = tmp_path / "scenes"
    write_scenes(str(scenes), 3, seed=21)
    dataset = read_dataset(str(scenes))
    loaded = load_model("builtin:demo", device="cpu")
    plan = plan_labels(dataset.categories, loaded.label_set, loaded.model.config.num_labels)
    assert plan.unchanged  # the demo model knows the scenes' classes: its PQ is not zero

    held_out = read_held_out(dataset.examples, {})

    def score() -> dict:
        return held_out_pq(loaded.model, loaded.processor, held_out, plan, family=loaded.family,
                           device=torch.device("cpu"), batch_size=2)

    first = score()
    assert 0 < first["All"]["pq"] <= 1
    assert [c["name"] for c in first["per_category"]] == [c["name"] for c in dataset.categories]
    shutil.rmtree(scenes / "images")  # a later epoch reads nothing: what it scores is held
    shutil.rmtree(scenes / "panoptic")
    assert score() == first
