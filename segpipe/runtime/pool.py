"""The Ray layer: a pool of shard workers, each pinned to its GPU (or CPU share).

The driver hands a shard to whichever worker has room, so faster workers take more.
A worker that dies (or its node) loses nothing: its shards go back in the queue and the
pool starts a replacement; one that holds a shard past `--shard-timeout` is killed and
replaced the same way. When no node can host any worker, the pool waits `--node-wait`
for one to join. Knows nothing of models; it runs `pipeline.process_shard`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from segpipe.core.records import RunContext
from segpipe.destination.plan import load_shard
from segpipe.io.storage import Folder, redact
from segpipe.model.segmenter import Segmenter
from segpipe.sources import Source

log = logging.getLogger(__name__)

# Env vars workers get from the driver, by name: storage endpoints, regions, profile names,
# retry settings, model caches. An allow-list, since a runtime env is written to Ray's logs
# and shown on its dashboard, and a new variable may hold a secret (FSSPEC_S3_SECRET, a
# container's token). A local Ray's workers inherit the driver's environment anyway; a remote
# cluster's workers use their own credentials (an instance role, a mounted secret).
FORWARDED_ENV = frozenset({
    "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_EC2_METADATA_DISABLED",
    "FSSPEC_CONFIG_DIR", "FSSPEC_S3_ENDPOINT_URL",
    "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_CACHE", "SEGPIPE_CACHE",
})
FORWARDED_ENV_PREFIXES = ("AWS_ENDPOINT_URL_",)  # per-service endpoints: AWS_ENDPOINT_URL_S3
SHARDS_IN_FLIGHT_PER_WORKER = 2  # one running, one reading ahead
POLL_SECONDS = 1.0  # how often the driver looks at deadlines (shard timeouts, node wait)
NODE_WAIT_NOTICE_SECONDS = 10.0  # a worker not placed by then: say that the job waits


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environ` that workers get: those the allow-list names, no others."""
    return {k: v for k, v in environ.items()
            if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}


def init_ray(address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray; workers get our storage env."""
    if ray.is_initialized():
        return
    env = forwarded_env(os.environ)
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
    read_timeout: float | None = None  # seconds per image read; None: no limit
    fault: str | None = None  # test hook: a shard id that always fails, named in SEGPIPE_FAULT_SHARD


@ray.remote(max_restarts=0)
class ShardWorker:
    """Loads the model once; processes shards. Two calls may run at once so that the
    next shard reads while this one computes; the model lock keeps forwards serial."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.model_lock = threading.Lock()
        self.metrics = _WorkerMetrics()

    def node(self) -> str:
        """Answers as soon as the actor runs: the pool's sign that a node could host it."""
        return ray.get_runtime_context().get_node_id()

    def ready(self) -> dict[str, Any]:
        import torch

        if self.spec.torch_threads:
            torch.set_num_threads(self.spec.torch_threads)
        loaded = self.spec.segmenter.setup()
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(loaded.device), "gpu_ids": ray.get_gpu_ids(),
                "weights_sha256": loaded.weights_sha256}

    def process(self, shard_id: str, attempt: int) -> dict[str, Any]:
        from segpipe.pipeline.shard import process_shard

        spec = self.spec
        if spec.fault and spec.fault == shard_id:
            raise RuntimeError(f"injected fault in shard {shard_id}")
        shard = load_shard(spec.dst, spec.run.run_id, shard_id)
        marker = process_shard(
            shard, source=spec.source, segmenter=spec.segmenter, dst=spec.dst, run=spec.run,
            batch_size=spec.batch_size, attempt=attempt, read_threads=spec.read_threads,
            max_pixels=spec.max_pixels, read_timeout=spec.read_timeout,
            model_lock=self.model_lock,
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


def cpu_threads_per_worker(num_workers: int, gpus_per_worker: float = 1.0) -> int | None:
    """On a cluster without GPUs (or with workers that take none), each worker's torch gets
    its share of the CPUs (Ray would otherwise pin it to the one CPU it declares) less one
    core, which the worker's reading, post-processing and writing threads need beside the
    forward; with GPUs, torch's default is right."""
    cpus, gpus = cluster_resources()
    return None if gpus > 0 and gpus_per_worker > 0 else max(1, int(cpus // num_workers) - 1)


def default_num_workers(gpus_per_worker: float) -> int:
    return workers_for(*cluster_resources(), gpus_per_worker=gpus_per_worker)


def workers_for(cpus: float, gpus: float, *, gpus_per_worker: float) -> int:
    """One worker per `gpus_per_worker` GPUs; workers that take no GPU run on the CPU."""
    if gpus > 0 and gpus_per_worker > 0:
        return max(1, int(gpus // gpus_per_worker))
    # On CPU each worker runs torch on several threads; a few fat workers beat many thin ones.
    return max(1, int(cpus // 8))


class NoNodeAvailable(RuntimeError):
    """No node can host a worker, and none joined within --node-wait."""


@dataclass(eq=False)
class _Slot:
    """One worker of the pool, and how far it got: placed on a node, then its model loaded."""

    actor: Any
    placing: Any  # the ref of `node()` until the actor runs on a node, then None
    loading: Any  # the ref of `ready()` until the model has loaded, then None
    loaded: dict[str, Any] | None = None
    load: int = 0  # shards in flight
    deaths_before_load: int = 0  # of the workers before it in this place, in a row


@dataclass(frozen=True, eq=False)
class _Task:
    slot: _Slot
    shard_id: str
    attempt: int
    started: float  # monotonic time it was handed to the worker


class ShardPool:
    """Runs shard ids to commit or to failure, replacing dead and hung workers."""

    def __init__(self, spec: WorkerSpec, *, num_workers: int, gpus_per_worker: float,
                 cpus_per_worker: float, max_attempts: int, shard_timeout: float | None = None,
                 node_wait: float = 600.0) -> None:
        _, gpus = cluster_resources()
        self.spec = spec
        self.num_workers = num_workers
        self.options = {"num_gpus": gpus_per_worker if gpus > 0 else 0,
                        "num_cpus": cpus_per_worker,
                        "max_concurrency": SHARDS_IN_FLIGHT_PER_WORKER}
        self.max_attempts = max_attempts
        self.shard_timeout = shard_timeout
        self.node_wait = node_wait

    def start_worker(self) -> _Slot:
        actor = ShardWorker.options(**self.options).remote(self.spec)
        return _Slot(actor, actor.node.remote(), actor.ready.remote())

    def worker_needs(self) -> str:
        gpus, cpus = self.options["num_gpus"], self.options["num_cpus"]
        return f"{gpus:g} GPU(s) and {cpus:g} CPU(s)" if gpus else f"{cpus:g} CPU(s)"

    def run(self, shard_ids: list[str], on_commit: Callable[[dict[str, Any]], None], *,
            on_ready: Callable[[list[dict[str, Any]]], None] | None = None) -> PoolResult:
        """`on_ready` sees what the workers loaded, before the first shard starts and again
        whenever another worker has loaded (a late or replacement one) before it takes a
        shard; it may stop the job by raising."""
        result = PoolResult()
        if not shard_ids:
            return result
        dispatch = _Dispatch(self, shard_ids, result, on_commit, on_ready)
        try:
            dispatch.run()
        finally:
            dispatch.stop()
        return result


class _Dispatch:
    """One `ShardPool.run`: the queue of shards, the workers, and what each one holds."""

    def __init__(self, pool: ShardPool, shard_ids: list[str], result: PoolResult,
                 on_commit: Callable[[dict[str, Any]], None],
                 on_ready: Callable[[list[dict[str, Any]]], None] | None) -> None:
        self.pool = pool
        self.result = result
        self.on_commit = on_commit
        self.on_ready = on_ready
        self.queue: deque[tuple[str, int]] = deque((sid, 1) for sid in shard_ids)
        self.tasks: dict[Any, _Task] = {}
        self.slots = [pool.start_worker() for _ in range(min(pool.num_workers, len(shard_ids)))]
        self.unplaced_since: float | None = time.monotonic()
        self.told_waiting = False

    def run(self) -> None:
        while self.queue or self.tasks:
            self.hand_out()
            watched: dict[Any, _Slot | _Task] = dict(self.tasks)
            for slot in self.slots:
                for ref in (slot.placing, slot.loading):
                    if ref is not None:
                        watched[ref] = slot
            done, _ = ray.wait(list(watched), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                what = watched[ref]
                if isinstance(what, _Task):
                    if ref in self.tasks:
                        self.finish_task(ref, what)
                elif what in self.slots:
                    self.advance_worker(ref, what)
            self.give_up_on_late_shards()
            self.check_nodes()

    def hand_out(self) -> None:
        for slot in self.slots:
            while self.queue and slot.loaded is not None and slot.load < SHARDS_IN_FLIGHT_PER_WORKER:
                sid, attempt = self.queue.popleft()
                ref = slot.actor.process.remote(sid, attempt)
                self.tasks[ref] = _Task(slot, sid, attempt, time.monotonic())
                slot.load += 1

    def advance_worker(self, ref: Any, slot: _Slot) -> None:
        """A worker got placed or loaded its model. A model that cannot load, or a worker
        that cannot start, raises here: the job fails once, clearly."""
        try:
            value = ray.get(ref)
        except RayActorError as exc:
            if exc.actor_init_failed:
                raise
            if slot.deaths_before_load + 1 >= self.pool.max_attempts:
                raise RuntimeError(f"{slot.deaths_before_load + 1} worker(s) in a row died before "
                                   f"their model loaded: {redact(str(exc))}") from exc
            log.warning("a worker died before its model loaded (%s); replacing it",
                        type(exc).__name__)
            self.replace(slot)
            return
        if ref is slot.placing:
            slot.placing = None
            return
        slot.placing = slot.loading = None
        slot.loaded = value
        if self.on_ready is not None:
            self.on_ready([s.loaded for s in self.slots if s.loaded is not None])

    def finish_task(self, ref: Any, task: _Task) -> None:
        del self.tasks[ref]
        task.slot.load -= 1
        try:
            marker = ray.get(ref)
        except RayActorError as exc:
            # The worker process (or its node) is gone: every shard it held goes back in the queue.
            log.warning("a worker died (%s); replacing it", type(exc).__name__)
            self.retry_or_fail(task, redact(f"worker died: {exc}"))
            self.replace(task.slot, error="worker died")
            return
        except (RayTaskError, GetTimeoutError) as exc:
            log.debug("shard %s attempt %d failed", task.shard_id, task.attempt, exc_info=exc)
            self.retry_or_fail(task, redact(_task_error_message(exc)))
            return
        self.result.committed[task.shard_id] = marker
        self.on_commit(marker)

    def give_up_on_late_shards(self) -> None:
        """A shard past --shard-timeout is retried, and its worker killed: a thread stuck in
        a read or a device call cannot be cancelled otherwise."""
        timeout = self.pool.shard_timeout
        if timeout is None:
            return
        now = time.monotonic()
        for ref, task in list(self.tasks.items()):
            if ref not in self.tasks or now - task.started <= timeout:
                continue  # gone with a worker replaced a moment ago, or still in time
            log.warning("shard %s attempt %d took over %g s (--shard-timeout); replacing its "
                        "worker", task.shard_id, task.attempt, timeout)
            del self.tasks[ref]
            self.retry_or_fail(task, f"no result within {timeout:g} s (--shard-timeout)")
            self.replace(task.slot)

    def replace(self, slot: _Slot, *, error: str | None = None) -> None:
        """Kill `slot`'s worker and start another in its place. The shards it still holds go
        back in the queue: as failed attempts with `error`, or, without one, as they were
        (they only shared the worker with a shard that timed out)."""
        ray.kill(slot.actor, no_restart=True)
        for ref, task in list(self.tasks.items()):
            if task.slot is slot:
                del self.tasks[ref]
                if error is None:
                    self.queue.appendleft((task.shard_id, task.attempt))
                else:
                    self.retry_or_fail(task, error)
        successor = self.pool.start_worker()
        if slot.loaded is None:
            successor.deaths_before_load = slot.deaths_before_load + 1
        self.slots[self.slots.index(slot)] = successor
        self.result.workers_replaced += 1

    def retry_or_fail(self, task: _Task, error: str) -> None:
        if task.attempt >= self.pool.max_attempts:
            self.result.failed[task.shard_id] = error
            log.error("shard %s failed after %d attempt(s): %s", task.shard_id, task.attempt, error)
        else:
            self.queue.append((task.shard_id, task.attempt + 1))

    def check_nodes(self) -> None:
        """Wait, up to --node-wait, while no worker has found a node; then fail clearly."""
        if any(slot.placing is None for slot in self.slots):
            self.unplaced_since, self.told_waiting = None, False
            return
        now = time.monotonic()
        self.unplaced_since = self.unplaced_since or now
        waited = now - self.unplaced_since
        kind = "a GPU" if self.pool.options["num_gpus"] else "free CPUs"
        if waited > self.pool.node_wait:
            raise NoNodeAvailable(
                f"no node with {kind} is available for a worker (each declares "
                f"{self.pool.worker_needs()}); none joined within --node-wait "
                f"{self.pool.node_wait:g} s. Committed shards are kept: add such a node (or "
                "lower --gpus-per-worker / --cpus-per-worker), then run the same command again.")
        if waited > NODE_WAIT_NOTICE_SECONDS and not self.told_waiting:
            self.told_waiting = True
            log.warning("no node with %s can host a worker now (each declares %s); waiting up "
                        "to %g s (--node-wait) for one to join", kind, self.pool.worker_needs(),
                        self.pool.node_wait)

    def stop(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def _task_error_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[-1]
