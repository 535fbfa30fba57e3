"""The Ray layer: a pool of shard workers, each pinned to its GPU (or CPU share).

The driver hands a shard to whichever worker has room, so faster workers take more.
A worker that dies loses nothing: its shards go back in the queue and the pool
starts a replacement. Knows nothing of models; it runs `pipeline.process_shard`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from segpipe.plan import load_shard
from segpipe.segmenter import Segmenter
from segpipe.sources import Source
from segpipe.storage import Folder, redact
from segpipe.writer import RunContext

log = logging.getLogger(__name__)

# Env vars workers must share with the driver: storage endpoints, regions, profiles. Secrets
# are not forwarded: a runtime env is visible on the dashboard. A local Ray's workers inherit
# the driver's environment anyway; a remote cluster's workers use their own credentials.
FORWARDED_ENV_PREFIXES = ("AWS_", "SEGPIPE_", "HF_", "TRANSFORMERS_", "FSSPEC_")
NEVER_FORWARDED = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                             "AWS_ACCESS_KEY_ID", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
SHARDS_IN_FLIGHT_PER_WORKER = 2  # one running, one reading ahead


def init_ray(address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray; workers get our storage env."""
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items()
           if k.startswith(FORWARDED_ENV_PREFIXES) and k not in NEVER_FORWARDED}
    # Inside a Ray job the job's own runtime env already reaches every worker, and Ray refuses
    # a driver runtime env that sets one of its variables again.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    env = {k: v for k, v in env.items() if k not in job_env}
    # OpenMP threads that spin while idle starve the reading and writing threads that run
    # beside torch on a CPU worker (several times slower on few cores); GPU work is unaffected.
    if "OMP_WAIT_POLICY" not in os.environ and "OMP_WAIT_POLICY" not in job_env:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or None,
             runtime_env={"env_vars": env},
             log_to_driver=True, logging_level=logging.WARNING, include_dashboard=None)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; plain data so it pickles cheaply."""

    source: Source
    segmenter: Segmenter
    dst: Folder
    run: RunContext
    batch_size: int
    read_threads: int
    max_pixels: int
    torch_threads: int | None = None
    fault: str | None = None  # test hook: a shard id that always fails, named in SEGPIPE_FAULT_SHARD


@ray.remote(max_restarts=0)
class ShardWorker:
    """Loads the model once; processes shards. Two calls may run at once so that the
    next shard reads while this one computes; the model lock keeps forwards serial."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.model_lock = threading.Lock()
        self.metrics = _WorkerMetrics()

    def ready(self) -> dict[str, Any]:
        import torch

        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        loaded = self.spec.segmenter.setup()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(loaded.device), "gpu_ids": ray.get_gpu_ids()}

    def process(self, shard_id: str, attempt: int) -> dict[str, Any]:
        from segpipe.pipeline import process_shard

        spec = self.spec
        if spec.fault and spec.fault == shard_id:
            raise RuntimeError(f"injected fault in shard {shard_id}")
        shard = load_shard(spec.dst, spec.run.run_id, shard_id)
        marker = process_shard(
            shard, source=spec.source, segmenter=spec.segmenter, dst=spec.dst, run=spec.run,
            batch_size=spec.batch_size, attempt=attempt, read_threads=spec.read_threads,
            max_pixels=spec.max_pixels, model_lock=self.model_lock,
        )
        self.metrics.record(marker)
        marker["pid"] = os.getpid()
        marker["peak_rss_mb"] = peak_rss_mb()
        return marker


def peak_rss_mb() -> float:
    """This process's peak resident memory."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _WorkerMetrics:
    """Ray metrics, exported to the dashboard and Prometheus by every node."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.images = metrics.Counter("segpipe_images", "Images processed.")
        self.segments = metrics.Counter("segpipe_segments", "Segments written.")
        self.errors = metrics.Counter("segpipe_errors", "Images that ended in the errors table.")
        self.shards = metrics.Counter("segpipe_shards", "Shards committed.")
        self.batch_latency = metrics.Histogram(
            "segpipe_batch_seconds", "Model batch latency (preprocess and forward; post-processing overlaps the next batch).",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60])

    def record(self, marker: dict[str, Any]) -> None:
        for counter, value in ((self.images, marker["images"]), (self.segments, marker["segments"]),
                               (self.errors, marker["errors"]), (self.shards, 1)):
            if value > 0:  # Ray counters refuse an increment of zero
                counter.inc(value)
        for seconds in marker.get("batch_seconds", []):
            self.batch_latency.observe(seconds)


@dataclass
class PoolResult:
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    workers_replaced: int = 0


def cluster_resources() -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def cpu_threads_per_worker(num_workers: int) -> int | None:
    """On a cluster without GPUs, each worker's torch gets its share of the CPUs (Ray would
    otherwise pin it to the one CPU it declares) less one core, which the worker's reading,
    post-processing and writing threads need beside the forward; with GPUs, torch's default
    is right."""
    cpus, gpus = cluster_resources()
    return None if gpus > 0 else max(1, int(cpus // num_workers) - 1)


def default_num_workers(gpus_per_worker: float) -> int:
    cpus, gpus = cluster_resources()
    if gpus > 0:
        return max(1, int(gpus // gpus_per_worker))
    # On CPU each worker runs torch on several threads; a few fat workers beat many thin ones.
    return max(1, int(cpus // 8))


class ShardPool:
    """Runs shard ids to commit or to failure, replacing dead workers."""

    def __init__(self, spec: WorkerSpec, *, num_workers: int, gpus_per_worker: float,
                 cpus_per_worker: float, max_attempts: int) -> None:
        _, gpus = cluster_resources()
        self.spec = spec
        self.num_workers = num_workers
        self.options = {"num_gpus": gpus_per_worker if gpus > 0 else 0,
                        "num_cpus": cpus_per_worker,
                        "max_concurrency": SHARDS_IN_FLIGHT_PER_WORKER}
        self.max_attempts = max_attempts

    def _start_worker(self) -> Any:
        return ShardWorker.options(**self.options).remote(self.spec)

    def run(self, shard_ids: list[str], on_commit: Callable[[dict[str, Any]], None]) -> PoolResult:
        result = PoolResult()
        if not shard_ids:
            return result
        workers = [self._start_worker() for _ in range(min(self.num_workers, len(shard_ids)))]
        # Load the model everywhere first: a model that cannot load fails the job once, clearly.
        ray.get([w.ready.remote() for w in workers])
        pending: deque[tuple[str, int]] = deque((sid, 1) for sid in shard_ids)
        in_flight: dict[Any, tuple[int, str, int]] = {}
        load = [0] * len(workers)

        def retry_or_fail(sid: str, attempt: int, error: str) -> None:
            if attempt >= self.max_attempts:
                result.failed[sid] = error
                log.error("shard %s failed after %d attempt(s): %s", sid, attempt, error)
            else:
                pending.append((sid, attempt + 1))

        while pending or in_flight:
            for idx, worker in enumerate(workers):
                while pending and load[idx] < SHARDS_IN_FLIGHT_PER_WORKER:
                    sid, attempt = pending.popleft()
                    in_flight[worker.process.remote(sid, attempt)] = (idx, sid, attempt)
                    load[idx] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            for ref in ready:
                idx, sid, attempt = in_flight.pop(ref)
                load[idx] -= 1
                try:
                    marker = ray.get(ref)
                except RayActorError as exc:
                    # The worker process is gone: every shard it held goes back in the queue.
                    log.warning("worker %d died (%s); replacing it", idx, type(exc).__name__)
                    retry_or_fail(sid, attempt, redact(f"worker died: {exc}"))
                    for other, (o_idx, o_sid, o_attempt) in list(in_flight.items()):
                        if o_idx == idx:
                            del in_flight[other]
                            retry_or_fail(o_sid, o_attempt, "worker died")
                    load[idx] = 0
                    workers[idx] = self._start_worker()
                    result.workers_replaced += 1
                    continue
                except (RayTaskError, GetTimeoutError) as exc:
                    log.debug("shard %s attempt %d failed", sid, attempt, exc_info=exc)
                    retry_or_fail(sid, attempt, redact(_task_error_message(exc)))
                    continue
                result.committed[sid] = marker
                on_commit(marker)
        for worker in workers:
            ray.kill(worker, no_restart=True)
        return result


def _task_error_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[-1]

