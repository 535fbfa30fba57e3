"""GPU throughput of the model stage: a Swin-B-sized Mask2Former (random weights) in bf16.

For batch 1, 8 and 16 it measures images/s of the forward alone and of the whole model
stage (preprocess + forward + post-process on the device, id maps back on the CPU), and
the share of wall time spent outside the forward. It also times our panoptic
post-processing against transformers' on the same outputs.

    python -m benchmarks.gpu [--images 64] [--height 480 --width 640]

Prints one JSON object per line and writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from segpipe import postprocess
from segpipe.labels import bundled, match_label_set
from segpipe.models import LoadedModel
from segpipe.records import DecodedImage, ImageRef
from segpipe.segmenter import Segmenter

RESULTS = Path(__file__).parent / "results" / "gpu.json"


def swin_base_mask2former(num_labels: int) -> torch.nn.Module:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    backbone = SwinConfig(image_size=384, embed_dim=128, depths=[2, 2, 18, 2],
                          num_heads=[4, 8, 16, 32], window_size=12,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    names = {i: c.name for i, c in enumerate(bundled("coco_panoptic"))}
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=100, id2label=names,
                               label2id={n: i for i, n in names.items()})
    assert len(names) == num_labels
    return Mask2FormerForUniversalSegmentation(config)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test the script")
    parser.add_argument("--batches", default="1,8,16")
    args = parser.parse_args()
    from transformers import Mask2FormerImageProcessor

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = swin_base_mask2former(133).to(device, torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 384, "longest_edge": 640})
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    loaded = LoadedModel("swin-b-mask2former-random", "mask2former", model, processor,
                         match_label_set(id2label), device, torch.bfloat16)
    segmenter = Segmenter("swin-b-mask2former-random", dtype="bf16")
    segmenter.loaded = loaded
    rng = np.random.default_rng(0)
    images = [DecodedImage(ImageRef(i, f"mem://{i}"),
                           rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8), "")
              for i in range(args.images)]
    results = []
    for batch_size in (int(b) for b in args.batches.split(",")):
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]
        inputs = [segmenter._preprocess(loaded, b) for b in batches]  # noqa: SLF001

        def forward_only(inputs=inputs) -> None:  # noqa: ANN001 - bound now, not at call time
            with torch.inference_mode():
                for x in inputs:
                    model(**x)

        def whole_stage(batches=batches) -> None:  # noqa: ANN001
            for b in batches:
                segmenter(b)

        n = len(batches) * batch_size
        forward_s = timed(forward_only, 3)
        segmenter.forward_seconds = 0.0
        stage_s = timed(whole_stage, 3)
        forward_in_stage = segmenter.forward_seconds / 4  # one warm-up + three timed calls
        row = {"case": f"batch{batch_size}", "batch_size": batch_size, "images": n,
               "image_size": [args.height, args.width], "dtype": "bf16",
               "forward_images_per_s": round(n / forward_s, 2),
               "stage_images_per_s": round(n / stage_s, 2),
               "outside_forward_fraction": round(1 - forward_in_stage / stage_s, 4)}
        print(json.dumps(row), flush=True)
        results.append(row)

    # Post-processing alone, ours against transformers', on the same outputs (batch 8).
    with torch.inference_mode():
        out = model(**segmenter._preprocess(loaded, images[:8]))  # noqa: SLF001
    cls, masks = out.class_queries_logits.float(), out.masks_queries_logits.float()
    sizes = [(args.height, args.width)] * 8
    stuff = loaded.label_set.stuff_model_labels()
    ours = timed(lambda: postprocess.post_process_panoptic(
        cls, masks, sizes, threshold=0.0, label_ids_to_fuse=stuff), 3)

    class Outputs:
        class_queries_logits = cls
        masks_queries_logits = masks

    theirs = timed(lambda: processor.post_process_panoptic_segmentation(
        Outputs(), threshold=0.0, label_ids_to_fuse=stuff, target_sizes=sizes), 3)
    pp = {"case": "postprocess_panoptic_batch8", "ours_s": round(ours, 5),
          "transformers_s": round(theirs, 5), "speedup": round(theirs / ours, 2)}
    print(json.dumps(pp), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "name": "gpu", "params": params,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "results": results, "postprocess": pp,
        "target": {"note": "no fixed target; recorded in docs/benchmarks.md"}}, indent=2))


if __name__ == "__main__":
    main()
