"""A job on a real multi-node Ray cluster on one machine, that loses a node midway.

Run by tests/runtime/test_nodes.py in a process of its own (the test session already holds a local
Ray): `python -m tests.support.cluster_job SCENARIO SRC DST MODEL`. It prints one JSON line: what
happened to the cluster and how the job ended.

Scenarios:
- cpu-node-lost: a head without CPUs and two one-CPU nodes, one worker on each; one node
  is removed after the first commit.
- gpu-node-replaced: the only node with a (declared) GPU is removed after the first commit,
  and a new one joins a few seconds later.
- gpu-node-lost: the same, and no node joins.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import ray
from ray.cluster_utils import Cluster

from segpipe.app.annotate import annotate
from segpipe.core.config import JobConfig
from segpipe.io.storage import Folder

# --node-wait per scenario: long where a node joins (starting it and a worker on it takes
# seconds on a busy machine), short where none will.
NODE_WAIT_S = {"cpu-node-lost": 60.0, "gpu-node-replaced": 90.0, "gpu-node-lost": 10.0}
REPLACEMENT_AFTER_S = 3.0


def commits(dst: Folder) -> int:
    return len(dst.list("_segpipe/runs/00001/commits"))


def wait_for_commit(dst: Folder, outcome: dict[str, Any], timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and "summary" not in outcome and "error" not in outcome:
        if commits(dst) >= 1:
            return True
        time.sleep(0.05)
    return False


def main(scenario: str, src: str, dst_url: str, model: str) -> dict[str, Any]:
    gpu = scenario.startswith("gpu")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1 if gpu else 0})
    node_args = {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": 1}
    nodes = [cluster.add_node(wait=False, **node_args) for _ in range(1 if gpu else 2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    config = JobConfig(src=src, dst=dst_url, model=model, shard_size=1, batch_size=1,
                       device="cpu" if gpu else None, num_workers=None if gpu else 2,
                       node_wait=NODE_WAIT_S[scenario], progress=False)
    outcome: dict[str, Any] = {}

    def job() -> None:
        started = time.monotonic()
        try:
            outcome["summary"] = annotate(config)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        outcome["job_s"] = time.monotonic() - started

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    dst = Folder(dst_url)
    if wait_for_commit(dst, outcome):
        outcome["commits_at_removal"] = commits(dst)
        removed_at = time.monotonic()
        cluster.remove_node(nodes[0])
        outcome["removed"] = True
        if scenario == "gpu-node-replaced":
            time.sleep(REPLACEMENT_AFTER_S)
            cluster.add_node(**node_args)
            outcome["replaced"] = True
    runner.join(timeout=240)
    if "removed" in outcome and "job_s" in outcome:
        outcome["after_removal_s"] = time.monotonic() - removed_at
    outcome["alive"] = runner.is_alive()
    ray.shutdown()
    cluster.shutdown()
    return outcome


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5]), default=str))
