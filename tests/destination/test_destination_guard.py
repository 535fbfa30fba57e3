"""What a destination accepts: its settings, its source, and which run an invocation works on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from segpipe.app.annotate import JobFailed, annotate
from segpipe.core.config import JobConfig
from segpipe.destination.runs import DestinationMismatch, check_settings, prepare_run
from segpipe.io.storage import Folder, filesystem
from segpipe.model.loading import ModelLoadError
from segpipe.sources import open_source
from tests.support.checkpoints import save_tiny_mask2former
from tests.support.images import write_images
from tests.support.outputs import read_panoptic, read_table

pytestmark = pytest.mark.usefixtures("ray_cluster")


def upload(local_folder, url: str) -> None:
    if not url.startswith("s3://"):
        shutil.copytree(local_folder, url, dirs_exist_ok=True)
        return
    fs, path = filesystem(url)
    for p in sorted(local_folder.iterdir()):
        fs.put_file(str(p), f"{path}/{p.name}")


def images_of(dst: str) -> list[str]:
    return sorted(i["file_name"] for i in read_panoptic(Folder(dst))["images"])


def test_another_source_on_a_destination_is_refused_unless_incremental(tmp_path, tiny_model, where):
    s1, s2, dst = where("s1"), where("s2"), where("dst")
    upload_images = {s1: write_images(tmp_path / "gen-a", 3, seed=1),
                     s2: write_images(tmp_path / "gen-b", 2, seed=2)}
    upload(tmp_path / "gen-a", s1)
    upload(tmp_path / "gen-b", s2)
    config = JobConfig(src=s1, dst=dst, model=tiny_model, shard_size=2, num_workers=1,
                       progress=False)
    assert annotate(config)["images"] == 3

    with pytest.raises(DestinationMismatch, match="--incremental") as refused:
        annotate(config.replace(src=s2))
    assert s1 in str(refused.value) and s2 in str(refused.value)
    # The same source again, written with a trailing slash, is the same source.
    assert annotate(config.replace(src=s1 + "/"))["run_id"] == "00001"

    second = annotate(config.replace(src=s2, incremental=True))
    assert (second["run_id"], second["images"]) == ("00002", 2)
    expected = sorted(f"{src}/{p.name}" for src, paths in upload_images.items() for p in paths)
    assert images_of(dst) == expected


def test_a_failed_first_attempt_does_not_lock_the_destination(tmp_path, tiny_model, where):
    src, dst = where("src"), where("dst")
    write_images(tmp_path / "gen-imgs", 3, seed=3)
    upload(tmp_path / "gen-imgs", src)
    config = JobConfig(src=src, dst=dst, model=tiny_model, shard_size=2, num_workers=1,
                       progress=False)
    with pytest.raises(ModelLoadError):
        annotate(config.replace(model=str(tmp_path / "no-such-model")))
    assert not Folder(dst).exists("_segpipe/job.json")  # planned, but no settings recorded

    # Other settings and another source are accepted while nothing is committed.
    other = write_images(tmp_path / "gen-other", 2, seed=4)
    upload(tmp_path / "gen-other", where("other"))
    summary = annotate(config.replace(src=where("other"), task="semantic"))
    assert (summary["run_id"], summary["images"]) == ("00001", len(other))
    stored = Folder(dst).read_json("_segpipe/job.json")["fingerprint"]
    assert stored["task"] == "semantic" and stored["model"] == tiny_model
    assert len(stored["weights_sha256"]) == 64
    # Once something is committed, the settings hold.
    with pytest.raises(DestinationMismatch, match="task"):
        annotate(config.replace(src=where("other")))


def test_dtype_and_retrained_weights_are_part_of_the_guard(tmp_path, tiny_model, monkeypatch):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    write_images(tmp_path / "src", 4, seed=5)
    config = JobConfig(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model=str(model),
                       shard_size=2, num_workers=1, max_attempts=1, progress=False)
    monkeypatch.setenv("SEGPIPE_FAULT_SHARD", "00001-000001")
    with pytest.raises(JobFailed):
        annotate(config)  # one shard committed, one failed: a resume has work to do
    monkeypatch.delenv("SEGPIPE_FAULT_SHARD")

    with pytest.raises(DestinationMismatch, match="dtype"):
        annotate(config.replace(dtype="bf16"))
    save_tiny_mask2former(model, seed=7)  # retrained: same path, other weights
    with pytest.raises(DestinationMismatch, match="weights_sha256"):
        annotate(config)
    assert len(read_table(Folder(config.dst), "images")) == 2  # nothing of the new weights

    shutil.rmtree(model)
    shutil.copytree(tiny_model, model)  # the original weights again: the resume finishes
    assert annotate(config)["status"] == "complete"


def test_a_failing_shard_does_not_block_later_incremental_runs(tmp_path, tiny_model, monkeypatch):
    src = tmp_path / "src"
    write_images(src, 4, seed=6)
    config = JobConfig(src=str(src), dst=str(tmp_path / "dst"), model=tiny_model, shard_size=2,
                       num_workers=1, max_attempts=1, incremental=True, progress=False)
    monkeypatch.setenv("SEGPIPE_FAULT_SHARD", "00001-000001")
    with pytest.raises(JobFailed):
        annotate(config)
    monkeypatch.delenv("SEGPIPE_FAULT_SHARD")

    for p in write_images(tmp_path / "more", 1, seed=7):
        p.rename(src / f"new-{p.name}")
    second = annotate(config)
    # A new run, with the new image and the failed shard's two images.
    assert (second["run_id"], second["images"], second["status"]) == ("00002", 3, "complete")
    assert images_of(config.dst) == sorted(str(p) for p in src.iterdir())
    assert annotate(config)["images"] == 0  # and the next night has nothing left to do


@pytest.mark.parametrize("interrupted", ["while planning", "after planning"])
def test_a_resume_honours_the_incremental_choice_of_its_run(tmp_path, tiny_model, interrupted):
    src = tmp_path / "src"
    paths = write_images(src, 3, seed=8)
    config = JobConfig(src=str(src), dst=str(tmp_path / "dst"), model=tiny_model, shard_size=2,
                       num_workers=1, progress=False)
    annotate(config)
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(paths[0])  # new content
    for p in write_images(tmp_path / "more", 1, seed=9):
        p.rename(src / f"new-{p.name}")

    # An incremental run that stopped before its shards ran: planning is complete or not.
    dst = Folder(config.dst)
    incremental = config.replace(incremental=True)
    check_settings(dst, incremental)
    state = prepare_run(dst, incremental, open_source(config.src))
    assert state.plan.num_images == 2
    if interrupted == "while planning":
        dst.delete(f"_segpipe/runs/{state.run.run_id}/plan.json")  # written last

    resumed = annotate(config)  # the same command, without --incremental
    assert (resumed["run_id"], resumed["images"]) == ("00002", 2)
    superseded = read_table(dst, "superseded")
    assert [(r["image_uri"], r["run_id"]) for r in superseded] == [(str(paths[0]), "00001")]
    assert json.loads(dst.read_bytes("_segpipe/runs/00002/run.json"))["incremental"] is True


def test_a_destination_inside_its_source_is_never_planned(tmp_path, tiny_model, where):
    src = where("lake")
    write_images(tmp_path / "gen", 3, seed=10)
    upload(tmp_path / "gen", src)
    config = JobConfig(src=src, dst=f"{src}/prelabels", model=tiny_model, shard_size=2,
                       num_workers=1, incremental=True, progress=False)
    first = annotate(config)
    assert first["images"] == 3
    second = annotate(config)  # the first run's PNGs are now under SRC
    assert (second["run_id"], second["images"]) == ("00002", 0)
    assert second["skipped"]["inside_destination"] > 0
    assert second["skipped"]["already_annotated"] == 3
    assert images_of(config.dst) == sorted(f"{src}/{p.name}" for p in (tmp_path / "gen").iterdir())
