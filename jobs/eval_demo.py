"""Measure the demo model's panoptic quality on held-out synthetic scenes.

    python jobs/eval_demo.py [--model segpipe/builtin/demo] [--seed 999] [--count 200]

Writes the scenes (ground truth) and the model's predictions as COCO panoptic into a
temporary folder, then scores them with `segpipe.tools.evaluate`. Seed 999 is held out: the
demo model never trains on it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

# Spinning OpenMP threads crawl on a shared CPU; see train_demo.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image
from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

from segpipe.demo.synth import write_scenes
from segpipe.formats import coco
from segpipe.io.storage import Folder
from segpipe.tools.evaluate import evaluate, format_report

HELD_OUT_SEED = 999
HELD_OUT_COUNT = 200
SCORE_THRESHOLD = 0.5  # transformers' default for post_process_panoptic_segmentation


def load(model_dir: str | Path):
    """The model (eval mode), its processor and its label list."""
    model = Mask2FormerForUniversalSegmentation.from_pretrained(model_dir).eval()
    processor = Mask2FormerImageProcessor.from_pretrained(model_dir)
    labels = json.loads(Path(model_dir, "labels.json").read_text())
    return model, processor, labels


@torch.inference_mode()
def predict(model, processor, labels: list[dict], images: list[np.ndarray]) -> list[tuple]:
    """(id map, {segment id: (category id, score)}) for each image, at its own size."""
    stuff = {i for i, c in enumerate(labels) if not c["isthing"]}
    inputs = processor(images=images, return_tensors="pt")
    outputs = model(pixel_values=inputs["pixel_values"])
    results = processor.post_process_panoptic_segmentation(
        outputs, threshold=SCORE_THRESHOLD, label_ids_to_fuse=stuff,
        target_sizes=[image.shape[:2] for image in images],
    )
    predictions = []
    for result in results:
        ids = result["segmentation"].clamp(min=0).to(torch.int32).numpy()
        # A fused stuff segment is listed once per query that joined it; keep one entry.
        segments = {
            s["id"]: (labels[s["label_id"]]["id"], s["score"]) for s in result["segments_info"]
        }
        predictions.append((ids, segments))
    return predictions


def _segment_info(ids: np.ndarray, segment_id: int, category_id: int, score: float) -> dict:
    mask = ids == segment_id
    ys, xs = np.nonzero(mask)
    x, y = int(xs.min()), int(ys.min())
    bbox = [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]
    return {"id": segment_id, "category_id": category_id, "area": int(mask.sum()),
            "bbox": bbox, "iscrowd": 0, "score": score}


def write_predictions(model_dir: str | Path, scenes_dir: str, out_dir: str, batch_size: int = 16):
    """Predict every image of a `write_scenes` folder into a COCO-panoptic folder."""
    model, processor, labels = load(model_dir)
    scenes, out = Folder(scenes_dir), Folder(out_dir)
    gt = scenes.read_json("panoptic.json")
    images, annotations = [], []
    for start in range(0, len(gt["images"]), batch_size):
        batch = gt["images"][start : start + batch_size]
        pixels = [_read_rgb(scenes, f"images/{image['file_name']}") for image in batch]
        for image, (ids, segments) in zip(batch, predict(model, processor, labels, pixels),
                                          strict=True):
            name = image["file_name"]
            out.write_bytes(f"panoptic/{name}", coco.id_map_to_png(ids))
            # Predictions name their image by its full URI, as the annotate job does.
            images.append(dict(image, file_name=scenes.url_of(f"images/{name}")))
            annotations.append({
                "image_id": image["id"], "file_name": name,
                "segments_info": [_segment_info(ids, k, c, s) for k, (c, s) in segments.items()],
            })
    out.write_json("panoptic.json", {"images": images, "annotations": annotations,
                                     "categories": gt["categories"]})


def _read_rgb(folder: Folder, key: str) -> np.ndarray:
    with Image.open(io.BytesIO(folder.read_bytes(key))) as image:
        return np.array(image.convert("RGB"))  # writable: torch.from_numpy warns otherwise


def measure(model_dir: str | Path, seed: int = HELD_OUT_SEED, count: int = HELD_OUT_COUNT,
            work_dir: str | None = None) -> dict[str, Any]:
    """PQ / SQ / RQ of the model on `count` scenes of `seed` (see segpipe.tools.evaluate)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = work_dir or tmp
        gt, pred = f"{root}/gt", f"{root}/pred"
        write_scenes(gt, count, seed)
        write_predictions(model_dir, gt, pred)
        return evaluate(f"{pred}/panoptic.json", f"{pred}/panoptic",
                        f"{gt}/panoptic.json", f"{gt}/panoptic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segpipe/builtin/demo")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--count", type=int, default=HELD_OUT_COUNT)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = measure(args.model, args.seed, args.count)
    print(json.dumps(result, indent=2) if args.json else format_report(result))


if __name__ == "__main__":
    main()
