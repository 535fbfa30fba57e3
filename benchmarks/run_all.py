"""`make bench`: run every CPU benchmark, then write the table in docs/benchmarks.md.

    python -m benchmarks.run_all [--only NAME ...] [--render-only]

Each benchmark writes benchmarks/results/<name>.json (an object with `name`, its measured
figures and the `target` it is held to). The GPU benchmark (benchmarks/gpu.py) needs a CUDA
machine and is run there by hand; its results file, when present, is rendered too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
DOC = Path(__file__).parent.parent / "docs" / "benchmarks.md"
BENCHMARKS = {
    "plan": ["-m", "benchmarks.plan"],
    "postprocess": ["-m", "benchmarks.postprocess"],
    "e2e": ["-m", "benchmarks.e2e"],
    "triage": ["-m", "benchmarks.triage"],
    "finetune": ["-m", "benchmarks.finetune"],
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def rows() -> list[str]:
    out = []
    if plan := load("plan"):
        r = {x["keys"]: x for x in plan["results"]}
        ratio = plan["ratio_peak_rss_1m_over_100k"]
        out.append(f"| Plan 1M keys vs 100k: peak RSS ratio | {r[1000000]['peak_rss_mb']} MB vs "
                   f"{r[100000]['peak_rss_mb']} MB; {r[1000000]['seconds']} s for 1M | "
                   f"**{ratio}** | <= {plan['target']['max_ratio']} | {verdict(ratio <= plan['target']['max_ratio'])} |")
    if pp := load("postprocess"):
        for x in pp["results"]:
            target = pp["target"]["speedup_min"] if x["task"] in pp["target"]["tasks"] else None
            goal = f">= {target}" if target else "(reported)"
            met = verdict(x["speedup"] >= target) if target else "-"
            out.append(f"| Post-process {x['task']} {x['case']}, batch {x['batch']}, {x['device']}: "
                       f"ours vs transformers | {x['ours_s']} s vs {x['transformers_s']} s | "
                       f"**{x['speedup']}x** | {goal} | {met} |")
    if tp := load("e2e_throughput"):
        x = tp["results"][0]
        out.append(f"| `segpipe annotate` S3->S3 vs transformers pipeline loop, {x['images']} "
                   f"images, {x['model']}, end to end | {x['segpipe_images_per_s']} vs "
                   f"{x['baseline_images_per_s']} images/s ({x['segpipe_s']} s vs "
                   f"{x['baseline_s']} s) | **{x['ratio']}x** | >= "
                   f"{tp['target']['ratio_min']} | {verdict(x['ratio'] >= tp['target']['ratio_min'])} |")
        out.append(f"| The same, per image once running (worker busy time vs the loop) | "
                   f"{x['steady_segpipe_ms_per_image']} vs "
                   f"{x['steady_baseline_ms_per_image']} ms an image | "
                   f"**{x['steady_ratio']}x** | (reported) | - |")
    if of := load("e2e_outside_forward"):
        x = of["results"][0]
        lim = of["target"]["outside_forward_fraction_max"]
        out.append(f"| Share of the workers' busy time outside the forward, batch {x['batch_size']} | "
                   f"{x['worker_forward_s']} s forward of {x['worker_busy_s']} s | "
                   f"**{x['outside_forward_fraction']:.1%}** | <= {lim:.0%} | "
                   f"{verdict(x['outside_forward_fraction'] <= lim)} |")
    if mem := load("e2e_memory"):
        small, large = mem["results"]
        lim = mem["target"]["max_ratio"]
        for key, label in (("driver_peak_rss_mb", "Driver"), ("worker_peak_rss_mb", "Worker")):
            ratio = mem["ratio_large_over_small"][key]
            out.append(f"| {label} peak RSS, {large['images']} vs {small['images']} images | "
                       f"{large[key]} MB vs {small[key]} MB | **{ratio}** | <= {lim} | "
                       f"{verdict(ratio <= lim)} |")
    if tr := load("triage"):
        x = tr["results"][0]
        gap = tr["target"]["pq_gap_min"]
        out.append(f"| Triage: PQ of the top-decile images by review priority vs the bottom "
                   f"decile, {x['images']} harder synthetic scenes (noise sigma <= "
                   f"{x['noise_sigma_max']:g}, blur <= {x['blur_radius_max']:g}), {x['model']} | "
                   f"{x['pq_top_decile']} vs {x['pq_bottom_decile']} (all {x['pq_all']}; rank "
                   f"correlation with image PQ {x['spearman_priority_vs_image_pq']}) | "
                   f"**{x['pq_gap']}** lower | >= {gap} | {verdict(x['pq_gap'] >= gap)} |")
        out.append(f"| Triage: the priority's cost beside the post-processing, {x['device']} | "
                   f"{x['priority_s']} s of {x['postprocess_s']} s | "
                   f"**{x['priority_share_of_postprocess']:.1%}** | (reported) | - |")
    return out + finetune_rows()


def finetune_rows() -> list[str]:
    ft = load("finetune")
    if not ft:
        return []
    before, after = ft["pq_before"], ft["pq_after"]
    return [
        f"| `segpipe finetune` builtin:demo on {ft['train_images']} scenes of a new domain "
        f"(dusk), {ft['train_seconds'] / 60:.1f} min of training ({ft['finetune_wall_seconds'] / 60:.1f}"
        f" min wall): held-out PQ on that domain | {before['new_domain']['All']} before | "
        f"**{after['new_domain']['All']}** | >= {ft['target_pq']} | {verdict(ft['met'])} |",
        f"| The same model on the original domain (seed 999): held-out PQ | "
        f"{before['original_domain']['All']} before | **{after['original_domain']['All']}** | "
        "(reported) | - |",
    ]


def finetune_notes() -> list[str]:
    ft = load("finetune")
    if not ft:
        return []
    load_avg = ", ".join(str(v) for v in ft["load_average_before"])
    return [
        f"The fine-tuning benchmark (`python -m benchmarks.finetune`): {ft['domain']}; "
        f"{ft['train_images']} training scenes (their ground truth as the reviewed labels), "
        f"{ft['held_out_images']} held-out scenes of another seed; {ft['steps']} steps in "
        f"{ft['epochs_done']} epochs, batch {ft['settings']['batch_size']}, lr "
        f"{ft['settings']['lr']}, one Ray Train worker with {ft['settings']['threads']} threads. "
        f"The machine was shared: load average {load_avg} (1, 5, 15 min) on "
        f"{ft['cores']} cores when it started. The wall time is the whole `finetune` call: "
        "starting Ray Train, the held-out PQ after each epoch (30 scenes) and publishing the "
        "model. Trained on dusk scenes alone, the model forgets bright ones: on the original "
        f"domain stuff PQ went from {ft['pq_before']['original_domain']['Stuff']} to "
        f"{ft['pq_after']['original_domain']['Stuff']} (things "
        f"{ft['pq_before']['original_domain']['Things']} to "
        f"{ft['pq_after']['original_domain']['Things']}): review data from both domains, "
        "trained together, would keep both (not measured here).", ""]


def e2e_notes() -> list[str]:
    """What the end-to-end figures are made of, from what the benchmark measured."""
    tp = load("e2e_throughput")
    if not tp:
        return []
    x = tp["results"][0]
    return [
        f"How the end-to-end figures break down ({x['images']} images, {x['cores']} cores). "
        f"The S3 endpoint is a moto server, a Python process on the same cores. The segpipe "
        f"command's time includes {x['segpipe_fixed_s']} s outside the workers' shard work "
        "(imports, starting Ray, starting the worker and loading the model, merging, exit); "
        "once running, a worker took "
        f"{x['steady_segpipe_ms_per_image']} ms an image against the loop's "
        f"{x['steady_baseline_ms_per_image']} ms. Both are bound by the machine's CPU: per "
        f"image, the whole machine spent {x['segpipe_cpu_ms_per_image']} ms of CPU on the "
        f"segpipe run (of which the S3 server {x['segpipe_s3_server_cpu_ms_per_image']} ms) "
        f"and {x['baseline_cpu_ms_per_image']} ms on the baseline (S3 server "
        f"{x['baseline_s3_server_cpu_ms_per_image']} ms). segpipe also writes what the "
        "baseline does not: a PNG object per image, and per shard three Parquet files, a COCO "
        "fragment and a commit marker.",
    ]


def cpu_cores() -> str:
    """The CPU machine as its end-to-end run recorded it."""
    tp = load("e2e_throughput")
    return f"{tp['results'][0]['cores']} cores" if tp else "cores not recorded"


def gpu_section() -> list[str]:
    gpu = load("gpu")
    if not gpu:
        return ["No GPU figures yet: run `python -m benchmarks.gpu` on a CUDA machine."]
    height, width = gpu["image_size"]
    lines = [f"{gpu['model']} ({gpu['params'] / 1e6:.0f} M parameters), {gpu['dtype']}, on "
             f"{gpu['device']} (torch {gpu['torch']}), {width}x{height} images:", "",
             "| batch | forward images/s | preprocess + forward + post-process images/s, "
             "pipelined | share outside the forward |", "|---|---|---|---|"]
    for x in gpu["results"]:
        lines.append(f"| {x['batch_size']} | {x['forward_images_per_s']} | "
                     f"{x['stage_pipelined_images_per_s']} | {x['outside_forward_fraction']:.1%} |")
    pp = gpu["postprocess"]
    lines += ["", f"Panoptic post-processing, batch {pp['batch']}, on {gpu['device']}: ours "
              f"{pp['ours_s']} s, transformers {pp['transformers_s']} s ({pp['speedup']}x)."]
    return lines


def render() -> None:
    lines = ["# Benchmarks", "",
             "Produced by `make bench` (`python -m benchmarks.run_all`) from "
             "`benchmarks/results/*.json`; each figure was measured, on the machine named.", "",
             f"## CPU ({cpu_cores()}: the development and CI machine)", "",
             "| what | measured | figure | target | |", "|---|---|---|---|---|", *rows(), "",
             *e2e_notes(), "", *finetune_notes(),
             "## GPU", "", *gpu_section(), ""]
    DOC.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if not args.render_only:
        for name in args.only or BENCHMARKS:
            print(f"== {name}", flush=True)
            subprocess.run([sys.executable, *BENCHMARKS[name]], check=True)
    render()
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
