"""Fine-tuning a universal segmentation model on a COCO-panoptic dataset, on Ray Train."""

from __future__ import annotations

from segpipe.train.config import FinetuneConfig, FinetuneError

__all__ = ["FinetuneConfig", "FinetuneError"]
