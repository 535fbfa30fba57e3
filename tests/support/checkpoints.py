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
    from transformers import Mask2FormerImageProcessor

    model = tiny_mask2former([c["name"] for c in DEMO_LIKE_LABELS], seed=seed,
                             num_queries=num_queries, size=size)
    _sharpen_masks(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    Mask2FormerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(DEMO_LIKE_LABELS))
    return folder


def tiny_mask2former(names: list[str], *, seed: int = 0, num_queries: int = 12,
                     size: int = 64) -> torch.nn.Module:
    """A ~0.35M-parameter random Mask2Former over `names`, with confident class scores."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    torch.manual_seed(seed)
    config = Mask2FormerConfig(
        backbone_config=_tiny_swin(size), feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, num_queries=num_queries,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = Mask2FormerForUniversalSegmentation(config).eval()
    _sharpen(model.class_predictor)
    return model


def _tiny_swin(size: int) -> object:
    from transformers import SwinConfig

    return SwinConfig(image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 2, 2], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])


def _sharpen(class_predictor: torch.nn.Linear) -> None:
    """Random weights give flat class scores; sharpen them and silence the "no object"
    class so that the default thresholds keep segments and the outputs have content."""
    with torch.no_grad():
        class_predictor.weight.mul_(25.0)
        class_predictor.bias[-1] = -20.0


def _sharpen_masks(model: torch.nn.Module) -> None:
    """Random mask logits hover near 0 (probability ~0.5); scale the last mask-embedding
    layer so that masks are decisive and survive the 0.5 mask threshold."""
    last = [m for name, m in model.named_modules()
            if "mask_embed" in name and isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(3.0)
        last.bias.mul_(3.0)


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A tiny CLIP BPE vocabulary that spells OneFormer's task prompts ("the task is
    panoptic") as whole words; the real tokenizer class reads it."""
    words = ["the", "task", "is", "panoptic", "instance", "semantic"]
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges = ["#version: 0.2"]
    for word in words:
        tokens = list(word[:-1]) + [word[-1] + "</w>"]
        while len(tokens) > 1:
            merged = tokens[0] + tokens[1]
            if f"{tokens[0]} {tokens[1]}" not in merges:
                merges.append(f"{tokens[0]} {tokens[1]}")
            vocab.setdefault(merged, len(vocab))
            tokens = [merged] + tokens[2:]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def save_tiny_oneformer(folder: Path, *, seed: int = 0, size: int = 64) -> Path:
    """A tiny OneFormer with its full processor (image processor + CLIP tokenizer)."""
    from transformers import (
        CLIPTokenizer,
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        OneFormerProcessor,
    )

    torch.manual_seed(seed)
    vocab, merges = write_clip_tokenizer_files(folder / "tokenizer-src")
    tokenizer = CLIPTokenizer(str(vocab), str(merges))
    names = [c["name"] for c in DEMO_LIKE_LABELS]
    config = OneFormerConfig(
        backbone_config=_tiny_swin(size), num_queries=12, text_encoder_width=32,
        text_encoder_num_layers=1, text_encoder_vocab_size=len(tokenizer),
        text_encoder_context_length=16, task_seq_len=16, text_encoder_n_ctx=4, conv_dim=32,
        mask_dim=32, hidden_dim=32, encoder_feedforward_dim=64, encoder_layers=1,
        decoder_layers=2, num_attention_heads=2, dim_feedforward=64, query_dec_layers=1,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = OneFormerForUniversalSegmentation(config).eval()
    _sharpen(model.model.transformer_module.decoder.class_embed)
    _sharpen_masks(model)
    metadata = {str(i): n for i, n in enumerate(names)}
    metadata["thing_ids"] = [i for i, c in enumerate(DEMO_LIKE_LABELS) if c["isthing"]]
    image_processor = OneFormerImageProcessor(size={"height": size, "width": size}, num_text=4,
                                              metadata=metadata, class_info_file=None)
    processor = OneFormerProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   max_seq_length=16, task_seq_length=16)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(DEMO_LIKE_LABELS))
    return folder


def save_tiny_maskformer(folder: Path, *, seed: int = 0, size: int = 64) -> Path:
    from transformers import (
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerImageProcessor,
    )

    torch.manual_seed(seed)
    names = [c["name"] for c in DEMO_LIKE_LABELS]
    config = MaskFormerConfig(
        backbone_config=_tiny_swin(size), fpn_feature_size=32, mask_feature_size=32,
        num_queries=12, decoder_config={"model_type": "detr", "d_model": 32, "encoder_layers": 1,
                                        "decoder_layers": 1, "encoder_attention_heads": 2,
                                        "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
                                        "decoder_ffn_dim": 64, "num_queries": 12},
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = MaskFormerForInstanceSegmentation(config).eval()
    _sharpen(model.class_predictor)
    _sharpen_masks(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    MaskFormerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps(DEMO_LIKE_LABELS))
    return folder
