"""The Ray layer: a pool of shard workers, each pinned to its GPU (or CPU share).

The driver hands a shard to whichever worker has room, so faster workers take more.
A worker that dies (or its node) loses nothing: its shards go back in the queue and the
pool starts a replacement; one that holds a shard past `--shard-timeout` is killed and
replaced the same way. When no node can host any worker, the pool waits `--node-wait`
for one to join. The pool starts its workers before the run is planned, so that their
model loads beside the planning; the run's shards come after. The workers are in `worker`,
the cluster's resources in `cluster`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ray
from ray.actor import ActorClass
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from segpipe.core.config import JobConfig, default_of
from segpipe.core.errors import SegpipeError
from segpipe.core.items import ShardResult
from segpipe.io.storage import redact
from segpipe.runtime.cluster import cluster_resources
from segpipe.runtime.worker import ShardJob, ShardWorker, WorkerSpec

log = logging.getLogger(__name__)

SHARDS_IN_FLIGHT_PER_WORKER = 2  # one running, one reading ahead
POLL_SECONDS = 1.0  # how often the driver looks at deadlines (shard timeouts, node wait)
NODE_WAIT_NOTICE_SECONDS = 10.0  # a worker not placed by then: say that the job waits

# Ray types a class decorated with `ray.remote(...)` as the class itself, not its ActorClass;
# the handles it makes are untyped, as `_Slot.actor` is.
_WORKER_CLASS = cast("ActorClass[Any]", ShardWorker)


@dataclass
class PoolResult:
    """What a run of the pool did: each committed shard's result, and why others failed."""

    committed: dict[str, ShardResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    workers_replaced: int = 0


class NoNodeAvailable(SegpipeError, RuntimeError):
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
                 node_wait: float = default_of("node_wait")) -> None:
        _, gpus = cluster_resources()
        self.spec = spec
        self.num_workers = num_workers
        self.options = {"num_gpus": gpus_per_worker if gpus > 0 else 0,
                        "num_cpus": cpus_per_worker,
                        "max_concurrency": SHARDS_IN_FLIGHT_PER_WORKER}
        self.max_attempts = max_attempts
        self.shard_timeout = shard_timeout
        self.node_wait = node_wait
        self.slots: list[_Slot] = []  # the workers started, in their places

    @classmethod
    def from_config(cls, spec: WorkerSpec, config: JobConfig, *, num_workers: int) -> ShardPool:
        return cls(spec, num_workers=num_workers, gpus_per_worker=config.gpus_per_worker,
                   cpus_per_worker=config.cpus_per_worker, max_attempts=config.max_attempts,
                   shard_timeout=config.shard_timeout, node_wait=config.node_wait)

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the workers now; each loads its model at once, and `run` uses them. The
        driver starts them before it plans, so that the model loads beside the planning."""
        while len(self.slots) < self.num_workers:
            self.slots.append(self.start_worker())

    def stop(self, *, keep: int = 0) -> None:
        """Kill the workers after the first `keep`."""
        for slot in self.slots[keep:]:
            ray.kill(slot.actor, no_restart=True)
        del self.slots[keep:]

    def start_worker(self) -> _Slot:
        actor = _WORKER_CLASS.options(**self.options).remote(self.spec)
        return _Slot(actor, actor.node.remote(), actor.ready.remote())

    def worker_needs(self) -> str:
        gpus, cpus = self.options["num_gpus"], self.options["num_cpus"]
        return f"{gpus:g} GPU(s) and {cpus:g} CPU(s)" if gpus else f"{cpus:g} CPU(s)"

    def run(self, job: ShardJob, shard_ids: list[str], on_commit: Callable[[ShardResult], None],
            *, on_ready: Callable[[list[dict[str, Any]]], None] | None = None) -> PoolResult:
        """Run `shard_ids` of `job` on the workers (started now if `start` was not called),
        and stop them. `on_ready` sees what the workers loaded, before the first shard
        starts and again whenever another worker has loaded (a late or replacement one)
        before it takes a shard; it may stop the job by raising."""
        result = PoolResult()
        try:
            if not shard_ids:
                return result
            self.start()
            self.stop(keep=len(shard_ids))  # more workers than shards would idle
            # In the object store once: each call passes its reference, not a copy.
            _Dispatch(self, ray.put(job), shard_ids, result, on_commit, on_ready).run()
        finally:
            self.stop()
        return result


class _Dispatch:
    """One `ShardPool.run`: the queue of shards, the workers, and what each one holds."""

    def __init__(self, pool: ShardPool, job: Any, shard_ids: list[str], result: PoolResult,
                 on_commit: Callable[[ShardResult], None],
                 on_ready: Callable[[list[dict[str, Any]]], None] | None) -> None:
        self.pool = pool
        self.job = job  # the ShardJob's object ref
        self.result = result
        self.on_commit = on_commit
        self.on_ready = on_ready
        self.queue: deque[tuple[str, int]] = deque((sid, 1) for sid in shard_ids)
        self.tasks: dict[Any, _Task] = {}
        self.slots = pool.slots  # the pool's own list: a replacement takes its place in it
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
                ref = slot.actor.process.remote(self.job, sid, attempt)
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
            shard_result = ray.get(ref)
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
        self.result.committed[task.shard_id] = shard_result
        self.on_commit(shard_result)

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


def _task_error_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[-1]
