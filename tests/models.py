"""Tiny random-initialized models the tests build on the spot (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

DEMO_LIKE_LABELS = [
    {"id": 1, "name": "sky", "isthing": 0, "color": [135, 206, 235]},
    {"id": 2, "name": "ground", "isthing": 0, "color": [120, 100, 60]},
    {"id": 3, "name": "circle", "isthing": 1, "color": [220, 20, 60]},
    {"id": 4, "name": "square", "isthing": 1, "color": [0, 128, 255]},
]


def save_tiny_mask2former(folder: Path, *, seed: int = 0, num_queries: int = 12,
                          size: int = 64) -> Path:
    """A ~0.35M-parameter Mask2Former with confident random predictions, saved as a
    checkpoint folder (safetensors, config, image processor) plus a label map."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)

    torch.manual_seed(seed)
    backbone = SwinConfig(image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    names = [c["name"] for c in DEMO_LIKE_LABELS]
    config = Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, num_queries=num_queries,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        # Random weights give flat class scores; sharpen them and silence the "no object"
        # class so that the default thresholds keep segments and the outputs have content.
        model.class_predictor.weight.mul_(25.0)
        model.class_predictor.bias[-1] = -20.0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    Mask2FormerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(DEMO_LIKE_LABELS))
    return folder
