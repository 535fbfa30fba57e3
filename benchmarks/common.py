"""What the benchmarks share: a local S3 endpoint, results files, subprocess jobs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).parent / "results"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"name": name, **payload}, indent=2) + "\n")
    return path


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


@dataclass
class S3Endpoint:
    url: str
    process: psutil.Process  # the server, a process of its own: its CPU is counted apart

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


@contextmanager
def local_s3() -> Iterator[S3Endpoint]:
    """A moto S3 server on 127.0.0.1, in its own process, as a real endpoint would be (in
    the benchmark's process it would take the GIL from the baseline it serves); AWS_* point
    every client and subprocess at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the moto server did not start on {url}") from None
                time.sleep(0.2)
        os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench-secret",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        yield S3Endpoint(url, psutil.Process(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def run_annotate(src: str, dst: str, *extra: str) -> tuple[float, dict[str, Any]]:
    """`segpipe annotate` in a fresh process (its own local Ray); wall seconds and summary."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segpipe.cli", "annotate", src, dst, "--no-progress",
                    *extra], check=True, env={**os.environ, "RAY_ADDRESS": ""},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    from segpipe.io.storage import Folder

    dest = Folder(dst)
    run_id = sorted(k.split("/")[2] for k in dest.list("_segpipe/runs") if k.endswith("summary.json"))[-1]
    return wall, dest.read_json(f"_segpipe/runs/{run_id}/summary.json")
