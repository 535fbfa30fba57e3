"""`make demo`: synthetic scenes -> annotate with builtin:demo -> evaluate -> where to look."""

from __future__ import annotations

import os

from segpipe.core.config import JobConfig


def run_demo(out: str, *, count: int = 200, seed: int = 999) -> int:
    from segpipe.app.annotate import annotate
    from segpipe.demo.synth import write_scenes
    from segpipe.tools.evaluate import evaluate, format_report

    out = os.path.abspath(out)
    scenes, dst = f"{out}/scenes", f"{out}/prelabels"
    if not os.path.exists(f"{scenes}/panoptic.json"):
        print(f"generating {count} synthetic scenes (seed {seed}) in {scenes}")
        write_scenes(scenes, count, seed)
    print(f"annotating {scenes}/images with builtin:demo into {dst}")
    summary = annotate(JobConfig(src=f"{scenes}/images", dst=dst, model="builtin:demo",
                                 batch_size=8, shard_size=50))
    result = evaluate(f"{dst}/panoptic.json", f"{dst}/panoptic", f"{scenes}/panoptic.json",
                      f"{scenes}/panoptic")
    print(format_report(result))
    print(f"\n{summary['images']} images annotated, {summary['errors']} errors, "
          f"{summary['images_per_s']} images/s")
    print(f"PQ {result['All']['pq']:.3f} against the ground truth in {scenes}")
    print(f"outputs: {dst}/panoptic.json, {dst}/panoptic/, {dst}/tables/")
    return 0
