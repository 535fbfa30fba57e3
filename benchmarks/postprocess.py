"""Post-processing: segpipe's batched functions vs the transformers processor, same outputs.

Run: python -m benchmarks.postprocess [--threads 1] [--device cpu]
Prints one JSON object per line and writes benchmarks/results/postprocess.json. Times are
the best of interleaved runs; `speedup` is on wall time, `cpu_speedup` on the process's CPU
time (steadier when other work shares the machine). Agreement with transformers' output is
reported beside the times.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from segpipe.model import postprocess

CASES = {"640x480": (480, 640), "1920x1080": (1080, 1920)}
TASKS = ("panoptic", "instance", "semantic")
RESULTS = Path(__file__).parent / "results" / "postprocess.json"


def make_outputs(batch: int, queries: int, classes: int, mask_size: int, kept: int,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask2Former-like outputs: `kept` confident queries per image whose masks tile the
    image (a Voronoi partition of all queries' seeds, soft at the borders, with noise);
    the other queries predict "no object"."""
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(batch, queries, classes + 1, generator=gen)
    cls[..., -1] += 2.0
    grid = torch.arange(mask_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    masks = torch.empty(batch, queries, mask_size, mask_size)
    for b in range(batch):
        chosen = torch.randperm(queries, generator=gen)[:kept]
        labels = torch.randint(0, classes, (kept,), generator=gen)
        cls[b, chosen, labels] = 9.0 + 3.0 * torch.rand(kept, generator=gen)
        cy, cx = (torch.rand(2, queries, 1, 1, generator=gen) * mask_size).unbind(0)
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        nearest_other = dist.sort(0).values[1]
        noise = 0.3 * torch.randn(queries, mask_size, mask_size, generator=gen)
        masks[b] = 2.0 * (nearest_other - dist) + noise - 0.5
    return cls, masks


def best_times(fns: dict[str, Callable[[], Any]], repeats: int,
               device: torch.device) -> dict[str, tuple[float, float, Any]]:
    """Interleaved runs (so both sides see the same machine load); per side the best wall
    and best CPU seconds, and the last output."""
    best = {name: (float("inf"), float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            sync(device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu), out)
    return best


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock reads what it ran."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(task: str, ours: list[postprocess.SegmentationResult], theirs: list) -> dict:
    """How closely our results match transformers': worst pixel agreement, segment lists."""
    pixel, same_segments, counts = 1.0, True, []
    for mine, ref in zip(ours, theirs, strict=True):
        if task == "semantic":
            label_of = torch.zeros(len(mine.segments) + 1, dtype=torch.long,
                                   device=mine.id_map.device)
            for seg in mine.segments:
                label_of[seg.segment_id] = seg.label_id
            pixel = min(pixel, (label_of[mine.id_map.long()] == ref).float().mean().item())
            same_segments &= [s.label_id for s in mine.segments] == ref.unique().tolist()
        else:
            shift = 1 if task == "instance" else 0  # transformers' instance ids start at 0
            seg_map = ref["segmentation"].to(mine.id_map.device)
            expected = torch.where(seg_map < 0, 0, seg_map + shift)
            pixel = min(pixel, (mine.id_map == expected).float().mean().item())
            first = {s["id"] + shift: s for s in reversed(ref["segments_info"])}
            same_segments &= [(s.segment_id, s.label_id) for s in mine.segments] == [
                (i, s["label_id"]) for i, s in sorted(first.items())]
        counts.append(len(mine.segments))
    return {"pixel_agreement": round(pixel, 6), "same_segments": bool(same_segments),
            "segments_per_image": round(sum(counts) / len(counts), 1)}


def run_case(name: str, size: tuple[int, int], task: str, outputs: tuple[torch.Tensor, ...],
             args: argparse.Namespace, processor: Any) -> dict:
    cls, masks = outputs
    sizes = [size] * len(cls)
    wrapped = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    threshold = {"panoptic": {"threshold": 0.8}, "instance": {"threshold": 0.5},
                 "semantic": {}}[task]
    ours_fn = getattr(postprocess, f"post_process_{task}")
    theirs_fn = getattr(processor, f"post_process_{task}_segmentation")
    timed = best_times({
        "ours": lambda: ours_fn(cls, masks, sizes, **threshold),
        "transformers": lambda: theirs_fn(wrapped, target_sizes=sizes, **threshold),
    }, args.repeats, masks.device)
    (ours_s, ours_cpu, ours), (theirs_s, theirs_cpu, theirs) = timed["ours"], timed["transformers"]
    return {"case": name, "task": task, "ours_s": round(ours_s, 4),
            "transformers_s": round(theirs_s, 4), "speedup": round(theirs_s / ours_s, 2),
            "ours_cpu_s": round(ours_cpu, 4), "transformers_cpu_s": round(theirs_cpu, 4),
            "cpu_speedup": round(theirs_cpu / ours_cpu, 2),
            "batch": len(cls), "queries": masks.shape[1], "classes": cls.shape[-1] - 1,
            "mask_size": list(masks.shape[-2:]), "target_hw": list(size),
            "threads": torch.get_num_threads(), "device": str(masks.device),
            **agreement(task, ours, theirs)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides (1 is steady on shared machines)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--classes", type=int, default=133)
    parser.add_argument("--mask-size", type=int, default=96, help="1/4 of a 384 input")
    parser.add_argument("--kept", type=int, default=40, help="confident queries per image")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per side")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from transformers import Mask2FormerImageProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "label_ids_to_fuse unset" warning, once per call
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    processor = Mask2FormerImageProcessor()
    outputs = tuple(t.to(device) for t in make_outputs(
        args.batch, args.queries, args.classes, args.mask_size, args.kept))
    results = []
    for name in args.cases:
        for task in args.tasks:
            row = run_case(name, CASES[name], task, outputs, args, processor)
            print(json.dumps(row), flush=True)
            results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "name": "postprocess", "results": results,
        "target": {"speedup_min": 10, "tasks": ["panoptic", "instance"]},
    }, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
