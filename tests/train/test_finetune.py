"""`segpipe finetune` end to end on a real local Ray (Ray Train), local files and S3 (moto)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segpipe.app.annotate import annotate
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.demo.synth import CATEGORIES, write_scenes
from segpipe.formats import coco
from segpipe.io.storage import Folder
from segpipe.model.loading import load_model
from segpipe.train.config import FinetuneConfig
from segpipe.train.run import finetune
from tests.support.checkpoints import DEMO_LIKE_LABELS

pytestmark = pytest.mark.usefixtures("ray_cluster")


def settings(train: str, base: str, out: str, **extra) -> FinetuneConfig:
    values = {"epochs": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "val_fraction": 0.0,
              "flip": False, "scale_jitter": (1.0, 1.0), "progress": False} | extra
    return FinetuneConfig(train=train, base_model=base, out=out, **values)


def test_a_tiny_model_learns_new_classes_and_its_output_loads_in_annotate(tmp_path, tiny_model):
    scenes = str(tmp_path / "scenes")
    write_scenes(scenes, 4, seed=11)
    out = str(tmp_path / "model")
    summary = finetune(settings(scenes, tiny_model, out, epochs=6))

    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # one batch, the same every step: the loss must fall
    tiny_names = {c["name"] for c in DEMO_LIKE_LABELS}
    assert set(summary["labels"]["new"]) == {c["name"] for c in CATEGORIES} - tiny_names
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "labels.json",
                 "MODEL_CARD.md"):
        assert (Path(out) / name).exists(), name
    assert json.loads((Path(out) / "labels.json").read_text()) == CATEGORIES
    assert "PQ" in (Path(out) / "MODEL_CARD.md").read_text()

    dst = tmp_path / "dst"
    result = annotate(JobConfig(src=f"{scenes}/images", dst=str(dst), model=out, batch_size=2,
                                num_workers=1, progress=False))
    assert result["status"] == "complete" and result["images"] == 4
    merged = json.loads((dst / "panoptic.json").read_text())
    assert [c["name"] for c in merged["categories"]] == [c["name"] for c in CATEGORIES]


def test_empty_images_and_crowd_segments_train_from_s3_to_s3(tmp_path, bucket):
    scenes = f"s3://{bucket}/scenes"
    write_scenes(scenes, 4, seed=12)
    folder = Folder(scenes)
    document = folder.read_json("panoptic.json")
    empty = document["annotations"][0]
    empty["segments_info"] = []
    height, width = document["images"][0]["height"], document["images"][0]["width"]
    folder.write_bytes(f"panoptic/{empty['file_name']}",
                       coco.id_map_to_png(np.zeros((height, width), np.int32)))
    document["annotations"][1]["segments_info"][0]["iscrowd"] = 1
    folder.write_json("panoptic.json", document)

    out = f"s3://{bucket}/models/tuned"
    summary = finetune(settings(scenes, "builtin:demo", out, epochs=1, val_fraction=0.5))
    assert summary["epochs"] == 1 and math.isfinite(summary["history"][0]["loss"])
    assert summary["pq_before"] is not None and summary["pq_after"] is not None
    assert Folder(f"s3://{bucket}/models").list("tuned.checkpoints")  # checkpoints on S3 too
    loaded = load_model(out, device="cpu")
    assert [c.name for c in loaded.label_set.categories] == [c["name"] for c in CATEGORIES]


def _checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("*/checkpoint_*"))


def test_a_killed_finetune_resumes_from_its_last_checkpoint(tmp_path, tiny_model):
    scenes = str(tmp_path / "scenes")
    write_scenes(scenes, 4, seed=13)
    out = tmp_path / "model"
    args = ["finetune", scenes, "--base-model", tiny_model, "--out", str(out), "--epochs", "12",
            "--batch-size", "4", "--val-fraction", "0", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    log = tmp_path / "killed.log"
    with open(log, "wb") as stream:
        proc = subprocess.Popen([sys.executable, "-m", "segpipe.cli", *args], env=env,
                                start_new_session=True, stdout=stream, stderr=stream)
    root = Path(f"{out}.checkpoints")
    try:
        # Generous: a fresh local Ray starts slowly on a busy machine.
        deadline = time.monotonic() + 600
        while len(_checkpoints(root)) < 2 or not list(root.glob("*/checkpoint_manager_snapshot.json")):
            assert proc.poll() is None, f"finetune ended before it was killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint in time: {log.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert not (out / "config.json").exists()

    killed_at = len(_checkpoints(root))
    assert main(args) == 0  # the same command again
    card = (out / "MODEL_CARD.md").read_text()
    resumed_at = int(card.split("resumed from checkpoints at epoch(s): [")[1].split("]")[0])
    assert 1 <= resumed_at <= killed_at + 1  # from the last checkpoint, not from the start
    assert "12 epoch(s)" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, 13))
