"""The model process's allocator keeps freed memory: a batch's activations, freed and
allocated again on the shard call's thread, no longer fault their pages in every batch."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import ray

from segpipe.model.segmenter import Segmenter
from segpipe.runtime.worker import ShardWorker, WorkerSpec

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 24 blocks of 8 MiB, allocated and freed six times on a thread that is not the main one, as a
# forward's activations on a shard call's thread: more than one 64 MiB heap of its arena.
ROUNDS = """
import resource, sys, threading
import numpy as np
from segpipe.runtime.allocator import keep_freed_memory

tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
faults = []

def batches():
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        blocks = [np.ones(1 << 20) for _ in range(24)]
        del blocks
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

thread = threading.Thread(target=batches)
thread.start()
thread.join()
print(tuned, max(faults[2:]))
"""


def _faults_per_round(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_blocks_stay_mapped_for_the_next_batch():
    tuned, tuned_faults = _faults_per_round("tuned")
    _, default_faults = _faults_per_round("default")
    assert tuned == "True"
    assert default_faults > 1000  # glibc's defaults unmap an empty extra heap every round
    assert tuned_faults < default_faults / 20


@pytest.mark.usefixtures("ray_cluster")
def test_a_shard_worker_tunes_its_allocator(tiny_model):
    worker = ShardWorker.options(num_cpus=0).remote(WorkerSpec(Segmenter(tiny_model)))
    try:
        assert ray.get(worker.ready.remote(), timeout=120)["allocator_tuned"] is GLIBC
    finally:
        ray.kill(worker)
