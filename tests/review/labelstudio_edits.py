"""Label Studio project exports as a reviewer leaves them, made from segpipe's own tasks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from segpipe.tools.export import run_export
from tests.support.reviews import Edits, prelabels, reviewer_edits, thing_names


def exported_tasks(dst: Path, out: Path) -> list[dict[str, Any]]:
    run_export(str(dst), format="labelstudio", out=str(out))
    return json.loads(out.read_text())


def as_reviewed(tasks: list[dict[str, Any]], *, when: str = "2026-01-02T10:00:00Z",
                lead_time: float = 30.0) -> list[dict[str, Any]]:
    """The project export after a reviewer submitted every prediction as it was."""
    out = []
    for number, task in enumerate(copy.deepcopy(tasks), start=1):
        task["id"] = number
        task["annotations"] = [{"id": number, "result": task["predictions"][0]["result"],
                                "was_cancelled": False, "lead_time": lead_time,
                                "created_at": when, "updated_at": when}]
        out.append(task)
    return out


def brush_item(name: str, mask: np.ndarray, item_id: str) -> dict[str, Any]:
    """A brush result as Label Studio stores it, encoded by label-studio-sdk."""
    return {"id": item_id, "type": "brushlabels", "from_name": "label", "to_name": "image",
            "original_width": mask.shape[1], "original_height": mask.shape[0],
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255),
                      "brushlabels": [name]}}


def task_of(tasks: list[dict[str, Any]], image_id: int) -> dict[str, Any]:
    return next(t for t in tasks if int(t["data"]["segpipe_image_id"]) == image_id)


def apply_edits(task: dict[str, Any], edits: Edits) -> None:
    """Replace the task's annotation result with the reviewer's edited masks."""
    task["annotations"][0]["result"] = [brush_item(name, mask, f"r{i}")
                                        for i, (name, mask) in enumerate(edits.masks)]


def edited_export(dst, tmp_path):
    """(export, edits): image A edited, B submitted as predicted (after an older, emptier
    annotation and before a cancelled one), C without annotation."""
    tasks = as_reviewed(exported_tasks(dst, tmp_path / "tasks.json"))
    images = prelabels(str(dst))
    (a, a_ids), (b, _), (c, _) = sorted(
        images, key=lambda pair: -sum(s.is_thing for s in pair[0].segments))
    edits = reviewer_edits(a, a_ids, thing_names(str(dst)))
    apply_edits(task_of(tasks, a.image_id), edits)
    b_task = task_of(tasks, b.image_id)
    b_task["annotations"].insert(0, {"id": 90, "result": [], "was_cancelled": False,
                                     "lead_time": 5.0, "created_at": "2026-01-01T09:00:00Z"})
    b_task["annotations"].append({"id": 91, "result": [], "was_cancelled": True,
                                  "created_at": "2026-01-03T09:00:00Z"})
    task_of(tasks, c.image_id)["annotations"] = []
    return tasks, edits, b


def write(tmp_path, tasks, name="export.json"):
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path
