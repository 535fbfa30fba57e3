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
    "peers": ["-m", "benchmarks.peers"],
    "stages": ["-m", "benchmarks.stages"],
    "merge_choice": ["-m", "benchmarks.merge_choice"],
    "merge_reads": ["-m", "benchmarks.merge_reads"],
    "startup": ["-m", "benchmarks.startup"],
    "jpeg_draft": ["-m", "benchmarks.jpeg_draft"],
    "allocator": ["-m", "benchmarks.allocator"],
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


def peers_section() -> list[str]:
    """segpipe against the transformers loop and Ray Data, per corpus (benchmarks/peers.py)."""
    peers = load("peers") or load("peers_quick")
    if not peers:
        return ["No figures yet: run `python -m benchmarks.peers`."]
    quick = [] if load("peers") else [
        "**Quick runs only so far** (`--quick`: 40 x 640x480 and 16 x 1920x1080, plus the "
        "400 x 640x480 corpus; on a machine loaded by other work, see each row's load): the "
        "full corpora's figures need the command below, run once on a quiet machine.", ""]
    lines = [*quick, "`python -m benchmarks.peers --contenders segpipe,segpipe-draft,loop,raydata "
             "--cpus-per-worker 1 2`: the same JPEGs (synthetic "
             "scenes rendered at the corpus's size with sensor-like grain, quality 90), "
             "`builtin:demo`, batch 8, thresholds 0.5 / 0.5 / 0.8, local files, in one run. "
             "Steady: segpipe's worker busy with shards, the loop after its first image, Ray "
             "Data between its first and last batch; fixed: wall less steady time. segpipe-draft "
             "is segpipe with `--jpeg-draft` (opt-in: JPEGs decoded at a reduced libjpeg scale "
             "that still covers the model's input). Machine CPU "
             "counts every process of the machine, others' work included.", "",
             "A corpus run with `--rounds N` ran every contender N times in alternating order; "
             "its row is the contender's median-wall round, with every round's wall beside it "
             "(one process's speed varies from one start to the next: the loop's steady rate "
             "by up to a third on this machine).", "",
             f"One run on {peers['cores']} cores; load average (1, 5, 15 min) after the run "
             f"{peers['load_avg_after']}, and before each contender in its row: above "
             f"{peers['cores']}, the machine was shared with other work and every figure is "
             "slower than on an idle one.", "",
             "| corpus | contender | wall s | steady ms/image | fixed s | machine CPU s/image "
             "| load before |", "|---|---|---|---|---|---|---|"]
    for corpus in peers["results"]:
        for x in corpus["rows"]:
            who = x["contender"] + (f" (--cpus-per-worker {x['cpus_per_worker']:g})"
                                    if x["contender"].startswith("segpipe") else "")
            wall = (f"{x['wall_s']} (rounds: {', '.join(map(str, x['walls_s']))})"
                    if "walls_s" in x else x["wall_s"])
            lines.append(f"| {x['images']} x {corpus['corpus']} | {who} | {wall} | "
                         f"{x['steady_ms_per_image']} | {x['fixed_s']} | "
                         f"{x['machine_cpu_s_per_image']} | {x['load_avg_1m_before']} |")
    lines += ["", "| corpus | ratios (peer's time over segpipe's) |", "|---|---|"]
    lines += [f"| {c['images']} x {c['corpus']} | "
              + ", ".join(f"{k} {v}" for k, v in c["ratios"].items()) + " |"
              for c in peers["results"]]
    return [*lines, "", *peers_targets(peers)]


def peers_targets(peers: dict[str, Any]) -> list[str]:
    """Each target of the peers run against its figures (segpipe without --jpeg-draft)."""
    target = peers.get("target")
    if not target:
        return []
    lines = ["| target | measured | |", "|---|---|---|"]
    for corpus in peers["results"]:
        goal = target["wall_ratio_min"].get(f"{corpus['corpus']}:{corpus['images']}")
        peers_named = ("loop",) if corpus["corpus"] != "640x480" else ("loop", "raydata")
        got = {p: corpus["ratios"].get(f"wall_{p}_over_segpipe") for p in peers_named}
        if goal is None or None in got.values():
            continue
        lines.append(f"| {corpus['images']} x {corpus['corpus']}: wall >= {goal}x "
                     f"{' and '.join(peers_named)} | "
                     + ", ".join(f"{p} {v}x" for p, v in got.items())
                     + f" | {verdict(all(v >= goal for v in got.values()))} |")
    ours = [r for c in peers["results"] for r in c["rows"] if r["contender"] == "segpipe"]
    if ours:
        fixed = [r["fixed_s"] for r in ours]
        lines.append(f"| fixed cost <= {target['fixed_s_max']} s | {min(fixed)} to {max(fixed)} s "
                     f"| {verdict(max(fixed) <= target['fixed_s_max'])} |")
        steady = [r["steady_ms_per_image"] for r in ours if r["corpus"] == "640x480"]
        if steady:
            lines.append(f"| steady <= {target['steady_ms_640x480_max']} ms an image at 640x480 "
                         f"| {min(steady)} to {max(steady)} ms "
                         f"| {verdict(max(steady) <= target['steady_ms_640x480_max'])} |")
    return lines


def cpu_side(ms: dict[str, float]) -> float:
    """A stage row's CPU work that stays on the CPU when the model runs on a GPU."""
    return ms["decode"] + ms["write_and_commit"]


def stages_section() -> list[str]:
    """Per-image CPU time by stage (benchmarks/stages.py), and what it means for more cores."""
    stages = load("stages")
    if not stages:
        return []
    keys = [k for k in stages["results"][0]["cpu_ms_per_image"] if k != "forward_only_wall"]
    lines = ["CPU ms an image, by stage (`python -m benchmarks.stages`; torch on one thread, "
             "batch 8; `write_and_commit` holds the PNG and the RLE again, plus a shard's "
             "Parquet, COCO fragment and marker spread over 8 images):", "",
             "| size | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for x in stages["results"]:
        lines.append(f"| {x['size']} | " + " | ".join(str(x["cpu_ms_per_image"][k]) for k in keys)
                     + " |")
    at = {x["size"]: x["cpu_ms_per_image"] for x in stages["results"]}
    small, large = at.get("640x480"), at.get("1920x1080")
    if small and large:
        lines += ["", f"What bounds the steady rate on 2 cores: a 640x480 image takes about "
                  f"{small['total']:.0f} ms of CPU on one thread (forward "
                  f"{small['preprocess_forward']:.0f}, post-processing to full size "
                  f"{small['postprocess']:.0f}, decode {small['decode']:.0f}, PNG "
                  f"{small['png']:.0f}, RLE and boxes {small['rle_and_stats']:.0f}, shard "
                  "files the rest, spread here over 8 images a shard), so both cores fully "
                  f"used give about {small['total'] / 2:.0f} ms an image; the peers run's "
                  "shards of 100 images spread their files thinner. On a GPU node the forward "
                  "and post-processing move to the device, leaving decode, PNG, RLE and the "
                  f"tables (about {cpu_side(small):.0f} ms of CPU at 640x480, "
                  f"{cpu_side(large):.0f} ms at 1920x1080) on `--cpus-per-worker` threads: "
                  f"with 16 cores one worker can decode and encode some "
                  f"{16000 / cpu_side(small):.0f} 640x480 images a second (or "
                  f"{16000 / cpu_side(large):.0f} at 1920x1080), as Pillow's decoder, zlib and "
                  "torch release the GIL; on one thread, "
                  f"{cpu_side(large):.0f} ms at 1920x1080 would cap a GPU at "
                  f"{1000 / cpu_side(large):.0f} images a second."]
    return lines


def merge_choice_section() -> list[str]:
    """Dense against tiled panoptic merging on a CPU (benchmarks/merge_choice.py)."""
    # The page states the threshold the code uses, not a copy of it (imported here: it loads torch).
    from segpipe.model.postprocess.merging import CPU_DENSE_MAX_PAIRS

    mc = load("merge_choice")
    if not mc:
        return []
    dense, tiled, ratio = mc["median"]["dense"], mc["median"]["tiled"], mc["tiled_over_dense"]
    faster = sum(r["tiled"]["wall_ms_per_image"] < r["dense"]["wall_ms_per_image"]
                 for r in mc["rounds"])
    return [f"Panoptic merge on a CPU, dense against tiled (`python -m benchmarks.merge_choice`; "
            f"{mc['images']} images at {mc['size']}, batch {mc['batch']}, on {mc['threads']} "
            f"threads as the worker runs them, {len(mc['rounds'])} rounds in alternating order, "
            f"medians): dense {dense['wall_ms_per_image']} ms wall and "
            f"{dense['cpu_ms_per_image']} ms CPU an image, tiled {tiled['wall_ms_per_image']} ms "
            f"and {tiled['cpu_ms_per_image']} ms (tiled over dense: wall "
            f"{ratio['wall_ms_per_image']}, CPU {ratio['cpu_ms_per_image']}; tiled faster in "
            f"{faster} of {len(mc['rounds'])} rounds). So on a CPU the merge tiles beyond "
            f"{CPU_DENSE_MAX_PAIRS:,} query-pixel pairs; on a GPU it stays dense up to the "
            "memory cap."]


def merge_reads_section() -> list[str]:
    """The merged panoptic.json on S3: fragments one at a time against several at once."""
    mr = load("merge_reads")
    if not mr:
        return []
    median = mr["median"]
    return [f"The job's merge on S3 (`python -m benchmarks.merge_reads`; {mr['images']} images in "
            f"{mr['fragments']} fragments on a moto server, {len(mr['rounds'])} rounds in "
            f"alternating order, medians): each fragment read once, one at a time "
            f"{median['one_at_a_time_s']} s, {mr['reads_at_once']} at once {median['at_once_s']} s "
            f"(**{mr['one_at_a_time_over_at_once']}x**). The moto server is a Python process on "
            "the same two cores, so a request costs CPU rather than network latency here; against "
            "a store tens of milliseconds away, the reads in flight divide the wait by up to "
            "their number. Before, the merge read every fragment twice (images, then "
            "annotations), one at a time."]


def allocator_section() -> list[str]:
    """The model process's allocator thresholds against glibc's defaults (benchmarks/allocator.py)."""
    al = load("allocator")
    if not al:
        return []
    d, t = al["median"]["default"], al["median"]["tuned"]
    return [f"A worker's C allocator (`python -m benchmarks.allocator`; the demo model's preprocess "
            f"and forward on {al['size']} JPEGs, batch {al['batch']}, torch on one thread, on a "
            f"thread that is not the main one as in a worker, {len(al['rounds'])} rounds of fresh "
            f"processes in alternating order, medians per image): glibc's defaults {d['cpu_ms']:.2f} "
            f"ms of CPU, {d['kernel_ms']:.2f} ms of it in the kernel, {d['minor_faults']:.0f} minor "
            f"page faults; with the worker's thresholds (`runtime.allocator`) {t['cpu_ms']:.2f} ms, "
            f"{t['kernel_ms']:.2f} ms, {t['minor_faults']:.0f} faults (**{al['default_over_tuned_cpu']}x** "
            "less CPU). With glibc's defaults a forward's freed activations went back to the "
            "kernel (a thread's extra heap is unmapped as soon as it is empty) and every batch "
            "faulted them in again, zeroed."]


def jpeg_draft_section() -> list[str]:
    """--jpeg-draft against a full decode in the shard pipeline (benchmarks/jpeg_draft.py)."""
    jd = load("jpeg_draft")
    if not jd:
        return []
    parts = []
    for row in jd["sizes"]:
        full, draft, ratio = row["median"]["full"], row["median"]["draft"], row["draft_over_full"]
        parts.append(
            f"at {row['size']} ({row['images']} images), full {full['cpu_ms_per_image']} ms CPU "
            f"and {full['wall_ms_per_image']} ms wall an image, draft {draft['cpu_ms_per_image']} "
            f"and {draft['wall_ms_per_image']} (draft over full: CPU {ratio['cpu_ms_per_image']}, "
            f"wall {ratio['wall_ms_per_image']}; CPU by round {row['cpu_ratio_by_round']}), "
            f"pixels whose category differs from a full decode's "
            f"{row['category_pixels_differing']['median']:.2%} for the median image and "
            f"{row['category_pixels_differing']['max']:.2%} at most, segment count different in "
            f"{row['category_pixels_differing']['segment_count_differs']} of "
            f"{row['category_pixels_differing']['images']} images")
    first = jd["sizes"][0]
    return [f"`--jpeg-draft` against a full decode, through the worker's shard pipeline "
            f"(`python -m benchmarks.jpeg_draft`; {first['rounds']} rounds in alternating order, "
            f"{first['threads']} decode and finishing threads, batch {first['batch']}, medians): "
            + "; ".join(parts) + ". The demo model's input is 128x128, so a 640x480 JPEG decodes "
            "at 1/2 and a 1920x1080 one at 1/8; the outputs stay at full size."]


def startup_section() -> list[str]:
    """Where a local run's fixed cost goes (benchmarks/startup.py)."""
    st = load("startup")
    if not st:
        return []
    m = st["median"]
    worker = m["import_torch_s"] + m["import_transformers_s"] + m["model_load_s"]
    return [f"A local run's fixed cost, part by part (`python -m benchmarks.startup`; medians of "
            f"{st['repeat']} fresh processes each): Ray's start {m['ray_start_s']} s, the cores "
            f"{m['machine_busy_share']:.0%} busy meanwhile, of which {m['api_server_wait_s']} s "
            "waiting for Ray's API server to publish its address before Ray starts the raylet; "
            f"then in the worker, `import torch` {m['import_torch_s']} s, the transformers "
            f"modules its first model load imports {m['import_transformers_s']} s, the load "
            "itself "
            f"{m['model_load_s']} s ({worker:.1f} s in all, one after another, before the first "
            "forward); and after the last line of output, "
            f"{m['exit_after_last_line_s']} s to the process's end. Ray's start and the "
            "worker's imports are other projects' code run once a job, and the worker cannot "
            "import before Ray has started its process: having the workers Ray starts ahead "
            "import them (Ray's module preload) gained nothing, as Ray starts those as the "
            "driver connects, at the end of its start, one per CPU, each importing. What the "
            "start did pay for nothing: the raylet's first connect to its object store, when "
            "the store was not listening yet, waited a whole second before trying again (a "
            "third to a half of the starts took 3.2-3.4 s instead of 2.2-2.4 s); a local Ray "
            "now retries every 50 ms (`runtime.cluster.SOCKET_CONNECT_RETRY`). Skipping the API "
            "server altogether (a private Ray hook) measured 2.4 to 1.8 s, but the dashboard "
            "agent then logs an error every second for the life of the cluster: not kept. "
            "The workers start as soon as Ray is up and load the model while the driver "
            "plans, which hides the load behind a long listing (a large source)."]


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
             "## Against its peers on real-size images", "", *peers_section(), "",
             *startup_section(), "", *stages_section(), "", *allocator_section(), "",
             *merge_choice_section(), "",
             *merge_reads_section(), "",
             *jpeg_draft_section(), "",
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
