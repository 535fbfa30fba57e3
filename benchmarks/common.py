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
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"name": name, **payload}, indent=2) + "\n")
    return path


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


@contextmanager
def local_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; AWS_* point every client (and subprocess) at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        server.stop()


def run_annotate(src: str, dst: str, *extra: str) -> tuple[float, dict[str, Any]]:
    """`segpipe annotate` in a fresh process (its own local Ray); wall seconds and summary."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segpipe.cli", "annotate", src, dst, "--no-progress",
                    *extra], check=True, env={**os.environ, "RAY_ADDRESS": ""},
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    from segpipe.storage import Folder

    dest = Folder(dst)
    run_id = sorted(k.split("/")[2] for k in dest.list("_segpipe/runs") if k.endswith("summary.json"))[-1]
    return wall, dest.read_json(f"_segpipe/runs/{run_id}/summary.json")
