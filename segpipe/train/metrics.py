"""Panoptic quality on the held-out split, with the same post-processing `annotate` uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segpipe.io.storage import redact_uri
from segpipe.model import postprocess
from segpipe.tools.evaluate import PQStat, ground_truth, pq_single_image, predictions, scores
from segpipe.train.dataset import Example, load_example
from segpipe.train.labels import LabelPlan


@dataclass(frozen=True)
class HeldOutImage:
    """A held-out example, read and decoded: its RGB image and its segment id map."""

    example: Example
    image: np.ndarray
    ids: np.ndarray


def read_held_out(examples: Sequence[Example], storage_options: dict[str, Any] | None = None,
                  ) -> list[HeldOutImage]:
    """The held-out images, read once per run: every epoch scores the same ones."""
    return [HeldOutImage(e, *load_example(e, storage_options or {})) for e in examples]


@torch.inference_mode()
def held_out_pq(model: Any, processor: Any, held_out: Sequence[HeldOutImage], plan: LabelPlan, *,
                family: str, device: torch.device, batch_size: int = 8) -> dict[str, Any]:
    """PQ / SQ / RQ (All, Things, Stuff, per category) of `model` on `held_out`."""
    was_training = model.training
    model.eval()
    stuff = {i for i, c in enumerate(plan.categories) if not c["isthing"]}
    categories = {int(c["id"]): c for c in plan.categories}
    total = PQStat()
    for start in range(0, len(held_out), batch_size):
        chunk = held_out[start:start + batch_size]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if family == "oneformer":
            kwargs["task_inputs"] = ["panoptic"] * len(chunk)
        inputs = processor(images=[h.image for h in chunk], **kwargs)
        tensors = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = model(**tensors)
        results = postprocess.post_process_panoptic(
            outputs.class_queries_logits.float(), outputs.masks_queries_logits.float(),
            [h.ids.shape for h in chunk], label_ids_to_fuse=stuff, family=family)
        for held, result in zip(chunk, results, strict=True):
            gt_ids, gt_segments = ground_truth(
                held.ids, [s.to_coco() for s in held.example.segments], categories)
            pred_ids = result.id_map.to("cpu", torch.int32).numpy()
            pred_segments = predictions(pred_ids, [
                {"id": s.segment_id, "category_id": int(plan.categories[s.label_id]["id"])}
                for s in result.segments], categories, redact_uri(held.example.image_uri))
            total.add(pq_single_image(gt_ids, gt_segments, pred_ids, pred_segments))
    model.train(was_training)
    return scores(total, plan.categories)
