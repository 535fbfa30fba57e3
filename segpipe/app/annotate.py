"""The annotate job on the driver: guard the destination, plan, run the pool, merge, summarize."""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from segpipe.app.phases import Phases
from segpipe.app.progress import Progress
from segpipe.core.config import JobConfig
from segpipe.core.errors import SegpipeError
from segpipe.core.items import CommitMarker, ShardResult
from segpipe.destination import layout
from segpipe.destination.committed import committed_shards
from segpipe.destination.incremental import write_superseded
from segpipe.destination.merge import write_merged_panoptic
from segpipe.destination.runs import (
    DestinationMismatch,
    RunState,
    check_settings,
    prepare_run,
    record_settings,
)
from segpipe.io.storage import Folder
from segpipe.runtime.cluster import cpu_threads_per_worker, default_num_workers, init_ray
from segpipe.runtime.pool import PoolResult, ShardPool
from segpipe.runtime.worker import ShardJob, WorkerSpec, peak_rss_mb
from segpipe.sources import Source, source_from_config

log = logging.getLogger(__name__)


class JobFailed(SegpipeError, RuntimeError):
    """The job ran but did not fully succeed; the summary at DST says what failed."""


def annotate(config: JobConfig) -> dict[str, Any]:
    """Run the job to the end; returns the run summary (also written to DST)."""
    started = time.time()
    phases = Phases()
    dst = Folder(config.dst, config.storage_options)
    # Ray starts (seconds of processes) while this thread's planning lists the source, and
    # the workers load the model while it goes on: a large source lists for minutes.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan") as planner:
        planned = planner.submit(phases.timed, "plan", _plan, config, dst)
        with phases.phase("ray_start"):
            init_ray(config.address, dashboard=config.dashboard)
        num_workers = config.num_workers or default_num_workers(config.gpus_per_worker)
        spec = WorkerSpec.from_config(
            config, torch_threads=cpu_threads_per_worker(num_workers, config.gpus_per_worker))
        pool = ShardPool.from_config(spec, config, num_workers=num_workers)
        pool.start()
    with pool:  # a failed planning stops the workers
        source, state, committed_before, todo = planned.result()
        run_id = state.run.run_id
        job = ShardJob.from_config(config, source=source, dst=dst, run=state.run,
                                   fault=_fault_shard())
        done_images = sum(m.images for m in committed_before.values())
        progress = Progress(total=state.plan.num_images, initial=done_images,
                            enabled=config.progress, stream=sys.stderr)

        def loaded(workers: list[dict[str, Any]]) -> None:
            if "to_first_worker_ready_s" not in phases.seconds:  # by the worker's clock
                phases.seconds["to_first_worker_ready_s"] = min(w["ready_at"] for w in workers) - started
            digests = {w["weights_sha256"] for w in workers}
            if len(digests) > 1:
                raise DestinationMismatch(f"workers loaded different weights for {config.model}: "
                                          "the model's files differ between nodes")
            record_settings(dst, config, digests.pop())

        with progress:
            result = pool.run(job, todo, lambda shard: progress.update(shard.marker),
                              on_ready=loaded)
    for sid, error in sorted(result.failed.items()):  # status reads these while no summary says
        dst.write_json(layout.failed(run_id, sid), {"shard_id": sid, "error": error})
    phases.since_start("to_pool_end")
    # One listing of what is committed now serves both: each is a full listing on a store.
    with phases.phase("merge"):
        shards = committed_shards(dst)
        if state.incremental or state.new_model:
            write_superseded(dst, run_id, state.run.created_at, shards)
        write_merged_panoptic(dst, shards=shards)
    summary = _summarize(config, state, committed_before, result, started, progress)
    summary["phases"] = _phases_summary(phases, result, started)
    dst.write_json(layout.summary(run_id), summary)
    if result.failed:
        raise JobFailed(f"{len(result.failed)} shard(s) failed: "
                        + "; ".join(f"{sid}: {err}" for sid, err in sorted(result.failed.items()))
                        + f". Run the same command again to retry them. Summary: {dst.url_of(layout.summary(run_id))}")
    if summary["error_rate"] > config.max_error_rate:
        raise JobFailed(f"{summary['errors']} of {summary['images']} images failed "
                        f"({summary['error_rate']:.1%} > --max-error-rate {config.max_error_rate:.1%}); "
                        "see the errors table")
    return summary


def _plan(config: JobConfig, dst: Folder) -> tuple[Source, RunState, dict[str, CommitMarker], list[str]]:
    """Guard the destination and plan the run: the source, the run's state, the markers of
    shards committed by earlier sessions of this run, and the shard ids still to do."""
    source = source_from_config(config)
    check_settings(dst, config)
    state = prepare_run(dst, config, source)
    run_id = state.run.run_id
    # Read once, for the progress bar's start and the run summary.
    committed_before = {sid: CommitMarker.from_json(dst.read_json(layout.commit(run_id, sid)))
                        for _, sid in committed_shards(dst, run_id)}
    todo = [sid for sid in state.plan.shard_ids() if sid not in committed_before]
    log.info("run %s: %d shards planned, %d committed, %d to do", run_id,
             state.plan.num_shards, len(committed_before), len(todo))
    return source, state, committed_before, todo


def _phases_summary(phases: Phases, result: PoolResult, started: float) -> dict[str, float]:
    """The phases, with when this session's first shard started and its last one ended."""
    shards = list(result.committed.values())
    if shards:
        phases.seconds["to_first_shard_s"] = min(r.started_at for r in shards) - started
        phases.seconds["after_last_shard_s"] = time.time() - max(r.finished_at for r in shards)
    return phases.as_dict()


def _fault_shard() -> str | None:
    import os

    return os.environ.get("SEGPIPE_FAULT_SHARD") or None


def _summarize(config: JobConfig, state: RunState, committed_before: dict[str, CommitMarker],
               result: PoolResult, started: float, progress: Progress) -> dict[str, Any]:
    run_id = state.run.run_id
    this_session = list(result.committed.values())
    markers = [*committed_before.values(), *(r.marker for r in this_session)]
    images = sum(m.images for m in markers)
    errors = sum(m.errors for m in markers)
    elapsed = time.time() - started
    status = "complete" if len(markers) == state.plan.num_shards else "incomplete"
    return {
        "run_id": run_id, "status": status, "started_at": state.run.created_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(), "duration_s": round(elapsed, 3),
        "model": config.model, "revision": config.revision, "task": config.task,
        "shards": {"planned": state.plan.num_shards, "committed": len(markers),
                   "failed": len(result.failed)},
        "failed_shards": result.failed,
        "images": images, "planned_images": state.plan.num_images,
        # Listed keys that were not planned, by reason (see sources.base.SKIP_REASONS).
        "skipped": state.plan.skipped,
        "annotated": sum(m.annotated for m in markers), "errors": errors,
        "segments": sum(m.segments for m in markers),
        "error_rate": errors / images if images else 0.0,
        "images_this_session": progress.processed,
        "images_per_s": round(progress.processed / elapsed, 3) if elapsed > 0 else 0.0,
        "workers_replaced": result.workers_replaced,
        # What this session's workers measured: time in the model's forward against the
        # time they were busy with shards, and peak memory of the driver and of the busiest worker.
        "worker_forward_s": round(sum(r.forward_s for r in this_session), 3),
        "worker_busy_s": round(busy_seconds(this_session), 3),
        "worker_peak_rss_mb": round(max((r.peak_rss_mb for r in this_session), default=0.0), 1),
        "driver_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def busy_seconds(results: Iterable[ShardResult]) -> float:
    """Seconds the workers spent on shards: per worker, the union of its shards' spans on
    its monotonic clock (a worker reads its next shard while it computes this one, so
    spans overlap)."""
    spans: dict[int | None, list[tuple[float, float]]] = defaultdict(list)
    for result in results:
        spans[result.pid].append(result.span)
    total = 0.0
    for worker_spans in spans.values():
        covered_to = float("-inf")
        for start, end in sorted(worker_spans):
            if end > covered_to:
                total += end - max(start, covered_to)
                covered_to = end
    return total
