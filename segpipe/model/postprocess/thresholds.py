"""Per-class score thresholds: the minimum score for a query of each class to be kept."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def threshold_of(labels: torch.Tensor, threshold: float,
                 class_thresholds: Mapping[int, float] | None, *,
                 dtype: torch.dtype = torch.float32) -> float | torch.Tensor:
    """Each query's threshold from its label: `class_thresholds[label]` where given, else
    `threshold`. Without class thresholds, `threshold` itself, so that comparisons round
    exactly as they did before (a Python float against the scores' dtype)."""
    if not class_thresholds:
        return threshold
    size = max(int(labels.max()) if labels.numel() else 0, max(class_thresholds)) + 1
    table = torch.full((size,), threshold, dtype=dtype, device=labels.device)
    for label, value in class_thresholds.items():
        table[label] = value
    return table[labels]


def drop_below_class_thresholds(class_probs: torch.Tensor,
                                class_thresholds: Mapping[int, float] | None) -> torch.Tensor:
    """Semantic segmentation keeps every query, weighted by its class probabilities: a query
    counts towards a listed class only where its probability passes that class's threshold."""
    if not class_thresholds:
        return class_probs
    minimum = torch.zeros(class_probs.shape[-1], dtype=class_probs.dtype,
                          device=class_probs.device)
    for label, value in class_thresholds.items():
        if label < len(minimum):
            minimum[label] = value
    return torch.where(class_probs >= minimum, class_probs, 0.0)
