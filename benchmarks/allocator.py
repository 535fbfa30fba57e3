"""The model process's allocator thresholds (`runtime.allocator.keep_freed_memory`) against
glibc's defaults: the demo model's preprocess + forward on 640x480 JPEGs, batch 8, torch on
one thread, on a thread that is not the main one (as a shard call runs it in a worker), each
setting in fresh processes, in alternating rounds.

    python -m benchmarks.allocator [--rounds 4] [--batches 12]

Per image: CPU ms (user + kernel), kernel ms and minor page faults of the forward's thread.
Prints one JSON line per round and setting and writes benchmarks/results/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import emit, write_result
from benchmarks.peers import render_corpus

BATCH = 8

# One setting in a fresh process: warm up, then the forward's thread's own CPU and faults.
FORWARDS = """
import json, resource, sys, threading
import torch
from segpipe.core.items import ImageRef
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.decode import decode_image
from segpipe.runtime.allocator import keep_freed_memory

setting, batch, batches, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
torch.set_num_threads(1)
tuned = keep_freed_memory() if setting == "tuned" else False
segmenter = Segmenter("builtin:demo")
segmenter.setup()
images = [decode_image(ImageRef(i, "file://" + p), open(p, "rb").read(), max_pixels=10**9)
          for i, p in enumerate(paths)]
out = {}

def run():
    for _ in range(3):
        segmenter.forward(images[:batch])
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for b in range(batches):
        start = (b * batch) % (len(images) - batch + 1)
        segmenter.forward(images[start:start + batch])
    after = resource.getrusage(resource.RUSAGE_THREAD)
    n = batches * batch
    out.update(cpu_ms=(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / n * 1000,
               kernel_ms=(after.ru_stime - before.ru_stime) / n * 1000,
               minor_faults=(after.ru_minflt - before.ru_minflt) / n)

thread = threading.Thread(target=run)
thread.start()
thread.join()
print(json.dumps({"tuned": tuned, **out}))
"""


def measure(setting: str, batches: int, paths: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", FORWARDS, setting, str(BATCH), str(batches), *paths],
                          capture_output=True, text=True, check=True, timeout=600)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if setting == "tuned" and not got["tuned"]:  # a row must never claim a setting not taken
        raise SystemExit("the allocator thresholds are glibc's; this C library did not take them")
    return got


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    corpus = Path(tempfile.gettempdir()) / "segpipe-peers" / "640x480-400"
    paths = [str(p) for p in render_corpus(corpus, 640, 480, 400)[:64]]
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = ("default", "tuned") if r % 2 == 0 else ("tuned", "default")
        row: dict[str, Any] = {"round": r}
        for setting in order:
            got = measure(setting, args.batches, paths)
            row[setting] = {k: round(v, 3) if isinstance(v, float) else v for k, v in got.items()}
            emit({"round": r, "setting": setting, **row[setting]})
        rounds.append(row)
    median = {s: {k: round(statistics.median(r[s][k] for r in rounds), 3)
                  for k in ("cpu_ms", "kernel_ms", "minor_faults")} for s in ("default", "tuned")}
    result = {"size": "640x480", "batch": BATCH, "batches": args.batches, "rounds": rounds,
              "median": median,
              "default_over_tuned_cpu": round(median["default"]["cpu_ms"] / median["tuned"]["cpu_ms"], 3)}
    emit({"median": median, "default_over_tuned_cpu": result["default_over_tuned_cpu"]})
    write_result("allocator", result)


if __name__ == "__main__":
    main()
