from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.reviews import demo_destination


@pytest.fixture(scope="session")
def demo_scenes_and_dst(tmp_path_factory, ray_cluster) -> tuple[Path, Path]:
    return demo_destination(tmp_path_factory)


@pytest.fixture
def dst(demo_scenes_and_dst, tmp_path) -> Path:
    """A fresh copy of the annotated destination, for a test to import into."""
    return Path(shutil.copytree(demo_scenes_and_dst[1], tmp_path / "dst"))
