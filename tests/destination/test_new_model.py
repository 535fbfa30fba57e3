"""`--new-model`: re-labeling a destination with a new model version, recorded in the run;
readers take the newest model's labels per image; another model by accident is refused."""

from __future__ import annotations

import pytest

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from segpipe.destination import layout
from segpipe.destination.reader import iter_images
from segpipe.destination.runs import DestinationMismatch, list_runs
from segpipe.io.storage import Folder
from tests.destination.test_destination_guard import upload
from tests.support.checkpoints import save_tiny_mask2former
from tests.support.images import write_images
from tests.support.outputs import read_panoptic

pytestmark = pytest.mark.usefixtures("ray_cluster")


def job(src: str, dst: str, model: str, **extra) -> JobConfig:
    return JobConfig(src=src, dst=dst, model=model, shard_size=2, batch_size=2, num_workers=1,
                     progress=False, **extra)


def test_a_new_model_relabels_every_image_and_readers_take_its_labels(tmp_path, tiny_model,
                                                                       where):  # noqa: F811
    src, dst = where("src"), where("dst")
    write_images(tmp_path / "gen", 3, seed=5)
    upload(tmp_path / "gen", src)
    newer = str(save_tiny_mask2former(tmp_path / "newer", seed=7))
    annotate(job(src, dst, tiny_model))

    with pytest.raises(DestinationMismatch, match="different settings"):
        annotate(job(src, dst, newer))  # another model by accident
    summary = annotate(job(src, dst, newer, new_model=True))
    assert summary["status"] == "complete" and summary["images"] == 3

    folder = Folder(dst)
    assert list_runs(folder) == ["00001", "00002"]
    record = folder.read_json(layout.run_record("00002"))
    assert record["new_model"]["model"]["model"] == newer
    assert record["new_model"]["previous"]["model"] == tiny_model
    assert record["new_model"]["replaces_run"] == "00001"
    images = list(iter_images(folder))
    assert len(images) == 3 and {i.run_id for i in images} == {"00002"}
    merged = read_panoptic(folder)
    assert len(merged["annotations"]) == 3
    assert all("/00002/" in f"/{a['file_name']}" for a in merged["annotations"])

    with pytest.raises(DestinationMismatch, match="different settings"):
        annotate(job(src, dst, tiny_model))  # the old model, now by accident
    again = annotate(job(src, dst, newer))  # the new version's own settings are accepted
    assert again["run_id"] == "00002" and list_runs(folder) == ["00001", "00002"]
