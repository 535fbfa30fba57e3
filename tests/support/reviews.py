"""A destination annotated by the demo model, and the edits a reviewer makes to it.

The reviewer's edits on one image: one thing segment deleted, one relabeled, one mask cut
(IoU between 0.5 and 0.98), and one segment added on top of the largest remaining segment.
Everything else is left as it was, so the outcome counts the edits imply are exact.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from segpipe.demo.synth import write_scenes
from segpipe.destination import reader
from segpipe.destination.reader import AnnotatedImage
from segpipe.io.storage import Folder, filesystem

ADDED_CATEGORY = "circle"


def demo_destination(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(scenes folder with ground truth, destination) of 3 synthetic scenes, made once."""
    root = tmp_path_factory.getbasetemp() / "reviewed-demo"
    scenes, dst = root / "scenes", root / "dst"
    if not (dst / "panoptic.json").exists():
        write_scenes(str(scenes), 3, 3)
        annotate(JobConfig(src=str(scenes / "images"), dst=str(dst), model="builtin:demo",
                           shard_size=2, num_workers=1, progress=False))
    return scenes, dst


def tree_digest(url: str) -> dict[str, str]:
    """Every file under `url` -> its sha256, to show that nothing changed."""
    fs, root = filesystem(url)
    return {path[len(root):]: hashlib.sha256(fs.cat_file(path)).hexdigest()
            for path in fs.find(root)}


@dataclass
class Edits:
    image: AnnotatedImage
    masks: list[tuple[str, np.ndarray]]  # what the reviewer hands back, in order
    changed: dict[int, str]  # pre-label segment id -> what was done to it
    expected: Counter[str]
    added_pixels: int  # pixels the added mask takes from the segment below it


def prelabels(dst: str) -> list[tuple[AnnotatedImage, np.ndarray]]:
    folder = reader.open_destination(dst)
    return [(image, reader.read_id_map(folder, image)) for image in reader.iter_images(folder)]


def reviewer_edits(image: AnnotatedImage, id_map: np.ndarray, thing_names: list[str]) -> Edits:
    things = sorted((s for s in image.segments if s.is_thing), key=lambda s: -s.area)
    assert len(things) >= 3, "the edited image needs three thing segments"
    relabeled, cut, deleted = things[0], things[1], things[2]
    rest = [s for s in image.segments if s.segment_id not in
            (relabeled.segment_id, cut.segment_id, deleted.segment_id)]
    host = max(rest, key=lambda s: s.area)
    masks: list[tuple[str, np.ndarray]] = []
    for seg in image.segments:
        mask = id_map == seg.segment_id
        if seg is deleted:
            continue
        if seg is relabeled:
            masks.append((next(n for n in thing_names if n != seg.category_name), mask))
        elif seg is cut:
            rows = np.flatnonzero(mask.any(axis=1))
            trimmed = mask.copy()
            trimmed[rows[0]: rows[0] + len(rows) // 4] = False
            iou = trimmed.sum() / mask.sum()
            assert 0.5 < iou < 0.98, iou
            masks.append((seg.category_name, trimmed))
        else:
            masks.append((seg.category_name, mask))
    host_pixels = np.flatnonzero(id_map.ravel() == host.segment_id)
    added = np.zeros(id_map.size, dtype=bool)
    added[host_pixels[: host.area // 100]] = True
    masks.append((ADDED_CATEGORY, added.reshape(id_map.shape)))
    expected = Counter(accepted=len(image.segments) - 3, edited=1, relabeled=1, deleted=1,
                       added=1)
    changed = {relabeled.segment_id: "relabeled", cut.segment_id: "edited",
               deleted.segment_id: "deleted"}
    return Edits(image, masks, changed, expected, host.area // 100)


def thing_names(dst: str) -> list[str]:
    return [c.name for c in reader.categories(Folder(dst)) if c.isthing]


def upload(local: Path, bucket: str, key: str) -> str:
    fs, _ = filesystem(f"s3://{bucket}")
    fs.put(str(local), f"{bucket}/{key}", recursive=local.is_dir())
    return f"s3://{bucket}/{key}"
