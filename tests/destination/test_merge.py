"""The merged panoptic.json: every committed image once, in shard order, whatever the number
of fragments read at once, on local files and on S3."""

from __future__ import annotations

import json

import pytest

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from segpipe.destination import layout
from segpipe.destination.merge import write_merged_panoptic
from segpipe.io.storage import Folder
from tests.destination.test_destination_guard import upload
from tests.support.images import write_images

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_fragments_read_at_once_merge_to_the_same_bytes(tmp_path, tiny_model, where):
    src, dst = where("src"), where("dst")
    upload(write_images(tmp_path / "gen", 5, seed=8)[0].parent, src)
    annotate(JobConfig(src=src, dst=dst, model=tiny_model, shard_size=1, batch_size=1,
                       num_workers=1, progress=False))
    folder = Folder(dst)
    merged = folder.read_bytes(layout.MERGED_PANOPTIC)  # the job's own merge: several at once
    assert write_merged_panoptic(folder, reads=1) == 5
    assert folder.read_bytes(layout.MERGED_PANOPTIC) == merged
    doc = json.loads(merged)
    assert [a["image_id"] for a in doc["annotations"]] == [i["id"] for i in doc["images"]]
    assert len({i["id"] for i in doc["images"]}) == 5 and doc["categories"]
