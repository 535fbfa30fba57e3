"""Annotated destinations that the export, preview, reading and table tests read.

Each is made once per test session, on the real local Ray with the tiny model, and kept
under the session's temporary folder; tests that change a destination copy it first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from tests.support.images import write_images

NUM_IMAGES = 8
SHARD_SIZE = 3  # three shards, so one can be uncommitted and others remain


def annotated(tmp_path_factory: pytest.TempPathFactory, model: str, task: str = "panoptic") -> Path:
    """A local destination of `task` over the shared source images."""
    root = tmp_path_factory.getbasetemp() / "annotated"
    src, dst = root / "src", root / task
    if not src.exists():
        write_images(src, NUM_IMAGES, seed=5)
    if not (dst / "panoptic.json").exists():
        annotate(JobConfig(src=str(src), dst=str(dst), model=model, task=task, batch_size=4,
                           shard_size=SHARD_SIZE, num_workers=1, progress=False))
    return dst


def copy_of(dst: Path, to: Path) -> Path:
    shutil.copytree(dst, to)
    return to
