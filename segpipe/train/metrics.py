"""Panoptic quality on the held-out split, with the same post-processing `annotate` uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from segpipe.io.storage import redact_uri
from segpipe.model import postprocess
from segpipe.tools.evaluate import PQStat, ground_truth, pq_single_image, predictions, scores
from segpipe.train.dataset import Example, load_example
from segpipe.train.labels import LabelPlan


@torch.inference_mode()
def held_out_pq(model: Any, processor: Any, examples: Sequence[Example], plan: LabelPlan, *,
                family: str, device: torch.device, batch_size: int = 8,
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """PQ / SQ / RQ (All, Things, Stuff, per category) of `model` on `examples`."""
    was_training = model.training
    model.eval()
    stuff = {i for i, c in enumerate(plan.categories) if not c["isthing"]}
    categories = {int(c["id"]): c for c in plan.categories}
    total = PQStat()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        loaded = [load_example(e, storage_options or {}) for e in chunk]
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if family == "oneformer":
            kwargs["task_inputs"] = ["panoptic"] * len(chunk)
        inputs = processor(images=[image for image, _ in loaded], **kwargs)
        tensors = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        outputs = model(**tensors)
        results = postprocess.post_process_panoptic(
            outputs.class_queries_logits.float(), outputs.masks_queries_logits.float(),
            [ids.shape for _, ids in loaded], label_ids_to_fuse=stuff, family=family)
        for example, (_, ids), result in zip(chunk, loaded, results, strict=True):
            gt_ids, gt_segments = ground_truth(
                ids, [s.to_coco() for s in example.segments], categories)
            pred_ids = result.id_map.to("cpu", torch.int32).numpy()
            pred_segments = predictions(pred_ids, [
                {"id": s.segment_id, "category_id": int(plan.categories[s.label_id]["id"])}
                for s in result.segments], categories, redact_uri(example.image_uri))
            total.add(pq_single_image(gt_ids, gt_segments, pred_ids, pred_segments))
    model.train(was_training)
    return scores(total, plan.categories)
