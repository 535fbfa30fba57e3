"""Where a local run's fixed cost goes: Ray's start, the worker's imports and model load, and
the command's exit, each measured in a fresh process as `segpipe annotate` pays it.

    python -m benchmarks.startup [--repeat 3] [--images 16]

- ray: `init_ray(None)` as a local run starts Ray, with the part of it that waits for Ray's
  API server to publish its address (Ray starts the raylet only after that), and how busy
  the machine's cores were meanwhile (Ray's start is several processes starting at once).
- worker: in a Ray worker process, as the shard worker loads: `import torch`, then the
  first load of the model, which imports most of transformers, less a second load of it (the
  load itself).
- exit: `segpipe annotate` on `--images` 640x480 images, from its last line of output to the
  process's end (the local Ray stopped by the command itself).

Prints one JSON line per repeat and writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import emit, write_result
from benchmarks.peers import render_corpus

ROOT = Path(__file__).resolve().parents[1]  # the scripts import benchmarks.common from here

RAY_START = """
import cProfile, json, pstats, time, psutil
from benchmarks.common import machine_busy_seconds
busy0, started = machine_busy_seconds(), time.perf_counter()
import ray
from segpipe.runtime.cluster import init_ray
profile = cProfile.Profile()
profile.enable()
init_ray(None)
profile.disable()
wall = time.perf_counter() - started
busy = machine_busy_seconds() - busy0
stats = pstats.Stats(profile).stats
def cumulative(file_end, name):
    return sum(v[3] for (path, _, fn), v in stats.items() if path.endswith(file_end) and fn == name)
print(json.dumps({"ray_start_s": wall, "api_server_wait_s": cumulative("services.py", "start_api_server"),
                  "machine_busy_share": busy / (wall * psutil.cpu_count())}))
"""

WORKER_LOAD = """
import json, ray
from segpipe.runtime.cluster import init_ray
init_ray(None)

@ray.remote(num_cpus=1)
def load():
    import time
    started = time.perf_counter()
    import torch
    torch_s = time.perf_counter() - started
    from segpipe.model.segmenter import Segmenter
    Segmenter("builtin:demo").setup()
    first_s = time.perf_counter() - started - torch_s
    # transformers imports most of itself lazily, during the first load; a second load of the
    # same model in this process imports nothing, so the difference is those imports.
    again = time.perf_counter()
    Segmenter("builtin:demo").setup()
    load_s = time.perf_counter() - again
    return {"import_torch_s": torch_s, "import_transformers_s": first_s - load_s,
            "model_load_s": load_s}

print(json.dumps(ray.get(load.remote())))
"""


def _json_from(script: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=600)
    return json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])


def exit_seconds(src: str, env: dict[str, str]) -> float:
    """From `segpipe annotate`'s last line of output to its process's end."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "segpipe.cli", "annotate", src,
                                 str(Path(tmp) / "dst"), "--model", "builtin:demo",
                                 "--no-progress"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        last = time.perf_counter()
        for _ in proc.stdout:
            last = time.perf_counter()
        assert proc.wait() == 0, "segpipe annotate failed"
        return time.perf_counter() - last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    env = {**os.environ, "RAY_ADDRESS": ""}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        render_corpus(Path(tmp), 640, 480, args.images)
        for index in range(args.repeat):
            row: dict[str, Any] = {"round": index + 1, **_json_from(RAY_START, env),
                                   **_json_from(WORKER_LOAD, env),
                                   "exit_after_last_line_s": exit_seconds(tmp, env)}
            row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
            emit(row)
            rounds.append(row)
    keys = [k for k in rounds[0] if k != "round"]
    median = {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    emit({"median": median})
    write_result("startup", {"repeat": args.repeat, "images": args.images, "median": median,
                             "rounds": rounds})


if __name__ == "__main__":
    main()
