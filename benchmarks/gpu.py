"""GPU throughput of the model stage: a Swin-B-sized Mask2Former (random weights) in bf16.

For each batch size (1, 8 and 16) it measures images/s of
  - the forward alone (preprocessed inputs already on the device);
  - the whole model stage run serially: `Segmenter.forward` then `Segmenter.postprocess` per
    batch (preprocess + forward + post-process on the device, id maps back on the CPU);
  - the whole model stage run the way `segpipe.pipeline.shard.process_shard` runs it:
    `postprocess` of batch N on one worker thread while batch N+1 is in `forward`;
and, for both stage runs, the share of wall time outside the forward
(1 - sum(ForwardedBatch.forward_s) / wall). It also times our panoptic post-processing
against transformers' on the same outputs (batch 8).

    python -m benchmarks.gpu [--images 64] [--height 480 --width 640] [--batches 1,8,16]

Prints one JSON object per line and writes benchmarks/results/gpu.json (or `--out`).
Smoke test on a CPU, in seconds, with a tiny model and small images (never writes gpu.json):

    python -m benchmarks.gpu --tiny --device cpu --dtype fp32 --images 8 --batches 1,4 --out /tmp/g.json

Only torch, torchvision, transformers, numpy and fsspec are needed (no ray, pyarrow,
pycocotools or s3fs), so the script runs on a bare GPU box with `PYTHONPATH=.`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from benchmarks.postprocess import sync
from segpipe.core.items import DecodedImage, ImageFailure, ImageRef, Prediction
from segpipe.labels import bundled, match_label_set
from segpipe.model import postprocess
from segpipe.model.loading import DTYPES, LoadedModel
from segpipe.model.segmenter import ForwardedBatch, Segmenter

RESULTS = Path(__file__).parent / "results" / "gpu.json"
# What benchmarks/run_all.py states about gpu.json when it renders docs/benchmarks.md.
DOCUMENTED = {"device": "cuda", "dtype": "bf16", "height": 480, "width": 640}
PP_BATCH = 8


def coco_names() -> dict[int, str]:
    return {i: c.name for i, c in enumerate(bundled("coco_panoptic"))}


def build_model(tiny: bool) -> torch.nn.Module:
    """Random-weight Mask2Former over COCO panoptic's 133 classes: Swin-B-sized, or the tests'
    tiny one (a smoke test that runs on a CPU)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    names = coco_names()
    if tiny:
        from tests.support.checkpoints import tiny_mask2former

        return tiny_mask2former(list(names.values()), num_queries=16)
    torch.manual_seed(0)
    backbone = SwinConfig(image_size=384, embed_dim=128, depths=[2, 2, 18, 2],
                          num_heads=[4, 8, 16, 32], window_size=12,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=100, id2label=names,
                               label2id={n: i for i, n in names.items()})
    return Mask2FormerForUniversalSegmentation(config)


def torchvision_processor(size: dict[str, int]) -> Any:
    """Mask2Former's image processor with the torchvision backend (what segpipe.model.loading
    loads), which preprocesses on the model's device. Later transformers 5.x name it
    `Mask2FormerImageProcessor`; earlier 5.x `Mask2FormerImageProcessorFast`."""
    import transformers

    cls = transformers.Mask2FormerImageProcessor
    if not any(c.__name__ == "TorchvisionBackend" for c in cls.__mro__):
        cls = getattr(transformers, "Mask2FormerImageProcessorFast", cls)
    return cls(size=size)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Seconds per call of `fn`, after one untimed warm-up call; the device is drained
    before the clock starts and before it stops."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def check(outputs: Sequence[ForwardedBatch | ImageFailure | Prediction]) -> None:
    """The segmenter turns exceptions into per-image failures; a benchmark that kept going
    would time error rows. Stop on the first one instead."""
    for out in outputs:
        if isinstance(out, ImageFailure):
            raise RuntimeError(f"the model stage failed on an image: {out}")


class StageRuns:
    """The whole model stage over a list of batches, serially or pipelined; each run adds
    the forward seconds that `Segmenter.forward` measured to `forward_s`."""

    def __init__(self, segmenter: Segmenter, batches: list[list[DecodedImage]]) -> None:
        self.segmenter = segmenter
        self.batches = batches
        self.forward_s = 0.0

    def _forward(self, batch: list[DecodedImage]) -> list[ForwardedBatch | ImageFailure]:
        forwarded = self.segmenter.forward(batch)
        check(forwarded)
        self.forward_s += sum(f.forward_s for f in forwarded if isinstance(f, ForwardedBatch))
        return forwarded

    def _postprocess(self, forwarded: list[ForwardedBatch | ImageFailure]) -> None:
        predictions = self.segmenter.postprocess(forwarded)
        check(predictions)
        assert all(isinstance(p, Prediction) and isinstance(p.id_map, np.ndarray)
                   for p in predictions)

    def serial(self) -> None:
        for batch in self.batches:
            self._postprocess(self._forward(batch))

    def pipelined(self) -> None:
        """As segpipe.pipeline.shard.process_shard: one finishing thread, at most two batches
        waiting on it, results collected in order."""
        pending: deque[Future[None]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="finish") as finishing:
            try:
                for batch in self.batches:
                    forwarded = self._forward(batch)
                    pending.append(finishing.submit(self._postprocess, forwarded))
                    while len(pending) > 2:
                        pending.popleft().result()
                while pending:
                    pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


def stage_figures(segmenter: Segmenter, batches: list[list[DecodedImage]], repeats: int,
                  device: torch.device, mode: str) -> tuple[float, float]:
    """(seconds per pass over `batches`, forward seconds per pass) for one mode."""
    runs = StageRuns(segmenter, batches)
    run = getattr(runs, mode)
    run()  # warm-up, not counted
    sync(device)
    runs.forward_s = 0.0
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    sync(device)
    wall = (time.perf_counter() - start) / repeats
    return wall, runs.forward_s / repeats


def postprocess_comparison(loaded: LoadedModel, segmenter: Segmenter,
                           images: list[DecodedImage], repeats: int) -> dict[str, Any]:
    """Our panoptic post-processing against transformers' on the same model outputs."""
    device = loaded.device
    batch = images[:PP_BATCH]
    with torch.inference_mode():
        out = loaded.model(**segmenter._preprocess(loaded, batch))  # noqa: SLF001
        cls, masks = out.class_queries_logits.float(), out.masks_queries_logits.float()
    sizes = [(int(img.pixels.shape[0]), int(img.pixels.shape[1])) for img in batch]
    stuff = loaded.label_set.stuff_model_labels()
    outputs = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)

    def ours() -> Any:
        with torch.inference_mode():
            return postprocess.post_process_panoptic(cls, masks, sizes, threshold=0.0,
                                                     label_ids_to_fuse=stuff)

    def theirs() -> Any:
        with torch.inference_mode():
            return loaded.processor.post_process_panoptic_segmentation(
                outputs, threshold=0.0, label_ids_to_fuse=stuff, target_sizes=sizes)

    ours_s = timed(ours, repeats, device)
    theirs_s = timed(theirs, repeats, device)
    return {"case": f"postprocess_panoptic_batch{len(batch)}", "batch": len(batch),
            "ours_s": round(ours_s, 5), "transformers_s": round(theirs_s, 5),
            "speedup": round(theirs_s / ours_s, 2)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=None, help="480 (tiny: 64)")
    parser.add_argument("--width", type=int, default=None, help="640 (tiny: 80)")
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test the script")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per figure")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny Mask2Former and small images: a smoke test that runs on a CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default benchmarks/results/gpu.json; with --tiny, "
                             "nothing is written unless --out is given)")
    args = parser.parse_args(argv)
    args.height = args.height or (64 if args.tiny else 480)
    args.width = args.width or (80 if args.tiny else 640)
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.images < 1 or args.repeats < 1:
        parser.error("--batches, --images and --repeats must be positive")
    if args.out is None and not args.tiny:
        args.out = RESULTS
    if args.out is not None and args.out.resolve() == RESULTS.resolve():
        # gpu.json is rendered into docs/benchmarks.md as a Swin-B, bf16, 640x480 CUDA run.
        actual = {"device": torch.device(args.device).type, "dtype": args.dtype,
                  "height": args.height, "width": args.width}
        wrong = {k: v for k, v in actual.items() if v != DOCUMENTED[k]}
        if args.tiny or wrong:
            parser.error(f"{RESULTS} only takes the documented run (Swin-B, "
                         f"{DOCUMENTED}); this one differs ({'tiny' if args.tiny else wrong}): "
                         "pass --out elsewhere")
    if importlib.util.find_spec("torchvision") is None:
        parser.error("torchvision is required: segpipe preprocesses on the model's device "
                     "through the image processor's torchvision backend")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import transformers

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: pass --device cpu (with --tiny) to smoke-test the script")
    dtype = DTYPES[args.dtype]
    torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left on CUDA
    model = build_model(args.tiny).to(device, dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    name = "tiny-mask2former-random" if args.tiny else "swin-b-mask2former-random"
    processor = torchvision_processor({"shortest_edge": 64, "longest_edge": 96} if args.tiny
                                      else {"shortest_edge": 384, "longest_edge": 640})
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    loaded = LoadedModel(name, "mask2former", model, processor, match_label_set(id2label),
                         device, dtype)
    segmenter = Segmenter(name, dtype=args.dtype, device=str(device))
    segmenter.loaded = loaded

    rng = np.random.default_rng(0)
    images = [DecodedImage(ImageRef(i, f"mem://{i}"),
                           rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8), "")
              for i in range(args.images)]
    results = []
    for batch_size in args.batch_sizes:
        batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        batches = [b for b in batches if len(b) == batch_size]
        if not batches:
            print(json.dumps({"case": f"batch{batch_size}", "skipped":
                              f"fewer than {batch_size} images"}), flush=True)
            continue
        n = len(batches) * batch_size
        inputs = [segmenter._preprocess(loaded, b) for b in batches]  # noqa: SLF001

        def forward_only(inputs: list[dict[str, Any]] = inputs) -> None:
            with torch.inference_mode():
                for x in inputs:
                    model(**x)

        forward_s = timed(forward_only, args.repeats, device)
        del inputs, forward_only
        serial_s, serial_fwd = stage_figures(segmenter, batches, args.repeats, device, "serial")
        piped_s, piped_fwd = stage_figures(segmenter, batches, args.repeats, device, "pipelined")
        row = {"case": f"batch{batch_size}", "batch_size": batch_size, "batches": len(batches),
               "images": n, "image_size": [args.height, args.width], "dtype": args.dtype,
               "forward_images_per_s": round(n / forward_s, 2),
               "stage_serial_images_per_s": round(n / serial_s, 2),
               "stage_pipelined_images_per_s": round(n / piped_s, 2),
               "outside_forward_fraction": round(1 - piped_fwd / piped_s, 4),
               "outside_forward_fraction_serial": round(1 - serial_fwd / serial_s, 4),
               # On CUDA both threads share the default stream and `forward` ends with a
               # device-wide synchronize, so the pipelined run's forward_s also holds the
               # finishing thread's kernels; this one uses the forward-only time instead.
               "outside_forward_fraction_vs_forward_only": round(1 - forward_s / piped_s, 4),
               "pipelined_speedup_over_serial": round(serial_s / piped_s, 3)}
        print(json.dumps(row), flush=True)
        results.append(row)

    pp = postprocess_comparison(loaded, segmenter, images, args.repeats)
    print(json.dumps(pp), flush=True)
    report = {
        "name": "gpu", "model": name, "params": params, "dtype": args.dtype,
        "image_size": [args.height, args.width], "repeats": args.repeats,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "results": results, "postprocess": pp,
        # Every results file names the target it is held to; this one has none to meet.
        "target": {"note": "no fixed target; recorded in docs/benchmarks.md"}}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
