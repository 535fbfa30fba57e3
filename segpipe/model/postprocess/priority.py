"""Review priority: how much an image needs a reviewer, from the logits, on the device.

Per query q with class probabilities p (softmax over the classes and "no object"):

- ``margin(q) = p1 - p2``, the top class probability less the second one ("no object"
  counts as a class, so a query torn between an object and nothing has a small margin; a low
  top score means a small margin too);
- ``stability(q) = |sigmoid(mask) >= 0.6| / |sigmoid(mask) >= 0.4|``, how much of its mask
  survives raising the mask threshold from 0.4 to 0.6 (1 for a crisp mask, 0 for one
  that is all soft edge; 1 when nothing passes 0.4), counted on the model's own mask grid;
- ``confidence(q) = 0.8 * stability(q) + 0.2 * margin(q)``.

The weights come from the triage benchmark (benchmarks/triage.py): on the demo model's
mistakes, mask stability ranked images by their PQ far better than the class margin (rank
correlation -0.55 against -0.05; the product of the two, -0.27), so it carries most of the
weight, and the margin stays for the class confusions that larger label sets bring.

The queries that count are those post-processing would keep: top class not "no object"
and top probability above ``threshold``, plus the near misses (top class not "no object",
top probability above ``threshold / 2``), which may be objects the labels left out. An
image's priority is ``1 - mean confidence`` over these queries, in [0, 1]; an image where
no query counts gets 1 (the model found nothing: a reviewer should look). Higher means
review first. It reads only the logits at the model's output size, so it costs a small
fraction of post-processing, and it never changes the labels.
"""

from __future__ import annotations

import math

import torch

LOW_MASK_THRESHOLD = 0.4
HIGH_MASK_THRESHOLD = 0.6
NEAR_MISS_SHARE = 0.5  # queries above this share of the score threshold count as near misses
MARGIN_WEIGHT = 0.2  # the class margin's share of a query's confidence; the rest is stability


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@torch.no_grad()
def review_priority(class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, *,
                    threshold: float) -> torch.Tensor:
    """(B,) review priority per image, in [0, 1], higher first (see the module docstring)."""
    probs = class_queries_logits.float().softmax(-1)  # (B, Q, C + 1)
    top = probs.topk(2, dim=-1)
    margin = top.values[..., 0] - top.values[..., 1]
    is_object = top.indices[..., 0] != probs.shape[-1] - 1
    counts = is_object & (top.values[..., 0] > threshold * NEAR_MISS_SHARE)
    masks = masks_queries_logits.float()
    # sigmoid(x) >= p  <=>  x >= logit(p): no sigmoid over the mask stack needed.
    low = (masks >= _logit(LOW_MASK_THRESHOLD)).flatten(2).sum(-1)
    high = (masks >= _logit(HIGH_MASK_THRESHOLD)).flatten(2).sum(-1)
    stability = torch.where(low > 0, high / low.clamp_min(1), 1.0)
    confidence = (1 - MARGIN_WEIGHT) * stability + MARGIN_WEIGHT * margin
    confidence = torch.where(counts, confidence, 0.0)
    num = counts.sum(-1)
    mean = confidence.sum(-1) / num.clamp_min(1)
    return torch.where(num > 0, 1 - mean, 1.0).clamp(0.0, 1.0)
