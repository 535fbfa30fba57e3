"""Small images for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_images(folder: Path, count: int, *, seed: int = 0, ext: str = "png") -> list[Path]:
    """Small random-content images of varied sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = int(rng.integers(24, 72)), int(rng.integers(24, 72))
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        path = folder / f"img-{i:03d}.{ext}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
