"""A node lost in the middle of a job, on a real multi-node Ray cluster on one machine.

The test session already holds a local Ray, so each test runs `tests/support/cluster_job.py` in a
process of its own: it starts a head and worker nodes (`ray.cluster_utils.Cluster`), runs
the job on a thread, removes a node after the first commit, and reports how the job ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from segpipe.io.storage import Folder
from tests.support.cluster_job import NODE_WAIT_S
from tests.support.images import write_images
from tests.support.outputs import check_contract

ROOT = Path(__file__).resolve().parents[2]
NUM_IMAGES = 24  # one per shard: the job is still running when the node goes


def run_on_cluster(scenario: str, src: Path, dst: str, model: str) -> dict[str, Any]:
    ray_tmp = Path(tempfile.mkdtemp(prefix="segnode-"))  # short: Ray's socket paths must fit
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)}
    # A session of its own, so that a job that hangs is ended with every node it started.
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.cluster_job", scenario, str(src), dst,
                             model], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome.get("removed"), f"the job ended before a node could be removed: {outcome}"
    assert not outcome["alive"], "the job still ran long after the node was removed"
    return outcome


@pytest.mark.slow  # over a minute: two nodes, two workers, and outputs on S3
def test_a_lost_node_has_its_shards_requeued_and_each_image_is_annotated_once(
        tmp_path, tiny_model, bucket):
    paths = write_images(tmp_path / "src", NUM_IMAGES, seed=8)
    dst = f"s3://{bucket}/out"
    outcome = run_on_cluster("cpu-node-lost", tmp_path / "src", dst, tiny_model)
    assert "error" not in outcome, outcome["error"]
    summary = outcome["summary"]
    assert outcome["commits_at_removal"] < NUM_IMAGES
    # The lost worker held shards: it was noticed and replaced, and its shards done elsewhere.
    assert summary["workers_replaced"] >= 1
    assert summary["status"] == "complete" and summary["shards"]["failed"] == 0
    check_contract(Folder(dst), [str(p) for p in paths])  # every image exactly once


@pytest.mark.slow  # about a minute: a node removed, then a new one started and joined
def test_a_job_whose_only_gpu_node_is_lost_waits_for_a_new_one(tmp_path, tiny_model):
    paths = write_images(tmp_path / "src", NUM_IMAGES, seed=9)
    dst = tmp_path / "dst"
    outcome = run_on_cluster("gpu-node-replaced", tmp_path / "src", str(dst), tiny_model)
    assert outcome.get("replaced") and "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["status"] == "complete" and summary["workers_replaced"] >= 1
    check_contract(Folder(str(dst)), [str(p) for p in paths])


def test_a_job_without_a_gpu_node_fails_after_the_node_wait(tmp_path, tiny_model):
    write_images(tmp_path / "src", NUM_IMAGES, seed=10)
    dst = tmp_path / "dst"
    outcome = run_on_cluster("gpu-node-lost", tmp_path / "src", str(dst), tiny_model)
    assert "no node with a GPU is available" in outcome["error"]
    assert "--node-wait" in outcome["error"]
    # It waited for a node, boundedly: neither at once nor for ever.
    wait = NODE_WAIT_S["gpu-node-lost"]
    assert wait <= outcome["after_removal_s"] < wait + 60
    # What committed before the loss stays committed, for the rerun to keep.
    assert len(list(dst.glob("_segpipe/runs/00001/commits/*.json"))) >= outcome["commits_at_removal"]
