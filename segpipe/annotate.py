"""The annotate job on the driver: guard the destination, plan, run the pool, merge, summarize."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from segpipe import layout
from segpipe.config import JobConfig
from segpipe.executor import (
    ShardPool,
    WorkerSpec,
    cpu_threads_per_worker,
    default_num_workers,
    init_ray,
    peak_rss_mb,
)
from segpipe.incremental import seen_filter, write_superseded
from segpipe.merge import committed_shards, write_merged_panoptic
from segpipe.plan import Plan, read_plan, write_plan
from segpipe.progress import Progress
from segpipe.segmenter import Segmenter
from segpipe.sources import open_source
from segpipe.status import list_runs
from segpipe.storage import Folder, redact_uri
from segpipe.writer import RunContext

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """The job ran but did not fully succeed; the summary at DST says what failed."""


class DestinationMismatch(RuntimeError):
    """The destination holds committed work made with other settings or from another source."""


# What decides a run's plan: another source plans other images.
SOURCE_FIELDS = ("src", "source_format", "image_column", "uri_column", "id_column")
# Recorded once the model has loaded; unknown (None) when the checkpoint's files were not found.
WEIGHTS_FIELD = "weights_sha256"


@dataclass(frozen=True)
class RunState:
    run: RunContext
    plan: Plan
    incremental: bool  # as recorded when the run started, whatever a resume's flags say


def stored_settings(dst: Folder) -> dict[str, Any] | None:
    return dst.read_json(layout.JOB)["fingerprint"] if dst.exists(layout.JOB) else None


def setting_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs, as "name: old -> new". A setting that one side does not record (a
    destination written before segpipe recorded it, weights not found) is not compared."""
    return [f"{k}: {stored[k]!r} -> {wanted[k]!r}" for k in sorted(set(stored) & set(wanted))
            if stored[k] != wanted[k] and not (k == WEIGHTS_FIELD and None in (stored[k], wanted[k]))]


def check_settings(dst: Folder, config: JobConfig) -> None:
    """Refuse settings other than those of the committed work at `dst`.

    A destination with nothing committed accepts new settings: a first attempt that failed
    (a mistyped model) must not lock it. Its unfinished runs are discarded, since they were
    planned and recorded for the old settings.
    """
    stored = stored_settings(dst)
    diffs = setting_differences(stored, config.fingerprint()) if stored else []
    if not diffs:
        return
    if any(True for _ in committed_shards(dst)):
        raise DestinationMismatch(
            f"{config.dst} holds outputs made with different settings ({', '.join(diffs)}). "
            "Write to a new destination, or delete this one to start over.")
    log.warning("%s has no committed shard; its settings are replaced (%s)", config.dst,
                ", ".join(diffs))
    for run_id in list_runs(dst):
        discard_run(dst, run_id)


def record_settings(dst: Folder, config: JobConfig, weights_sha256: str | None) -> None:
    """Store the settings that guard `dst`, once the model has loaded and the plan is written.

    The weights' digest is known only now: the same model path can hold retrained weights,
    and a resume with them would mix two models' outputs.
    """
    wanted = {**config.fingerprint(), WEIGHTS_FIELD: weights_sha256}
    stored = stored_settings(dst)
    if stored is not None:
        diffs = setting_differences(stored, wanted)
        if diffs and any(True for _ in committed_shards(dst)):
            raise DestinationMismatch(
                f"{config.dst} holds outputs made with different settings ({', '.join(diffs)}). "
                "Write to a new destination, or delete this one to start over.")
        if not diffs and stored.keys() >= wanted.keys() and stored.get(WEIGHTS_FIELD) is not None:
            return
    blob = json.dumps(wanted, sort_keys=True).encode()
    dst.write_json(layout.JOB, {"fingerprint": wanted,
                                "fingerprint_hash": hashlib.sha256(blob).hexdigest()[:16]})


def discard_run(dst: Folder, run_id: str) -> None:
    """Delete what a run without a committed shard wrote: its record, plan and the files of
    shards that never committed, so that nothing of it is left for a plain glob to read."""
    for prefix in layout.run_prefixes(run_id):
        dst.delete(prefix)


def session_outcome(dst: Folder, run_id: str) -> str | None:
    """How the run's last session ended: "complete", "failed" (it ran every shard and some
    ran out of attempts), or None when no session ended (killed, still running)."""
    if not dst.exists(layout.summary(run_id)):
        return None
    summary = dst.read_json(layout.summary(run_id))
    if summary["status"] == "complete":
        return "complete"
    shards = summary["shards"]
    return "failed" if shards["committed"] + shards["failed"] == shards["planned"] else None


def source_of(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide what a run plans, with a folder's trailing "/" dropped."""
    out = {k: config.get(k) for k in SOURCE_FIELDS}
    out["src"] = "::".join(part.strip().rstrip("/") for part in str(out["src"]).split("::"))
    return out


def prepare_run(dst: Folder, config: JobConfig, source: Any) -> RunState:
    """The run this invocation works on: the latest run, resumed, or a new one.

    - An unfinished latest run (killed, or interrupted while planning) is resumed as it was
      recorded, `--incremental` or not, whatever the flags say now.
    - `--incremental` starts a new run once the latest run's session has ended, even with
      failed shards: the new run plans every image not committed yet, the failed shards'
      images among them, so one bad shard cannot stop a nightly job.
    - Without it, a run that ended is resumed: failed shards are retried, a complete run
      does nothing. Another source is refused, since it would silently annotate nothing.
    """
    runs = list_runs(dst)
    if runs:
        latest = runs[-1]
        record = dst.read_json(layout.run_record(latest))
        ended = session_outcome(dst, latest)
        if not (config.incremental and ended is not None):
            if source_of(record["config"]) != source_of(config.to_dict()):
                if ended != "complete" and not dst.list(f"{layout.run_dir(latest)}/commits"):
                    log.warning("run %s of %s committed nothing and was planned from another "
                                "source; it is planned again", latest, config.dst)
                    discard_run(dst, latest)
                    return prepare_run(dst, config, source)
                raise DestinationMismatch(_other_source(config, latest, record, ended))
            return _open_run(dst, config, source, record)
    record = {"run_id": f"{len(runs) + 1:05d}", "started_at": datetime.now(timezone.utc).isoformat(),
              "config": config.to_dict(), "incremental": config.incremental}
    dst.write_json(layout.run_record(record["run_id"]), record)
    return _open_run(dst, config, source, record)


def _open_run(dst: Folder, config: JobConfig, source: Any, record: dict[str, Any]) -> RunState:
    run_id, incremental = record["run_id"], bool(record.get("incremental", False))
    run = RunContext(run_id, datetime.fromisoformat(record["started_at"]), config.model,
                     config.revision, config.task)
    plan = read_plan(dst, run_id)
    if plan is None:
        # The recorded shard size, so that a plan redone after an interruption is the same plan.
        shard_size = int(record["config"].get("shard_size") or config.shard_size)
        skip = seen_filter(dst) if incremental else None
        plan = write_plan(source, dst, run_id, shard_size, skip=skip)
    return RunState(run, plan, incremental)


def _other_source(config: JobConfig, run_id: str, record: dict[str, Any], ended: str | None) -> str:
    before = redact_uri(str(record["config"].get("src")))
    now = redact_uri(config.src)
    if ended is None or ended == "failed":
        return (f"run {run_id} of {config.dst} is unfinished and was planned from {before}, not "
                f"{now}. Run it again with SRC {before} to finish it (add --incremental to then "
                "start a new run), or write to another destination.")
    return (f"{config.dst} was annotated from {before}, not {now}. To annotate the images of "
            f"{now} that it does not hold yet, as a new run, add --incremental; or write to "
            "another destination.")


def annotate(config: JobConfig) -> dict[str, Any]:
    """Run the job to the end; returns the run summary (also written to DST)."""
    started = time.time()
    dst = Folder(config.dst, config.storage_options)
    source = open_source(config.src, source_format=config.source_format,
                         storage_options=config.storage_options, image_column=config.image_column,
                         uri_column=config.uri_column, id_column=config.id_column,
                         max_image_bytes=config.max_image_bytes,
                         allow_uri_schemes=config.uri_schemes,
                         allow_private_hosts=config.allow_private_hosts)
    check_settings(dst, config)
    state = prepare_run(dst, config, source)
    run_id = state.run.run_id
    # Markers of shards committed by earlier sessions of this run: read once, for the progress
    # bar's start and the run summary.
    earlier = {k.rsplit("/", 1)[1][: -len(".json")]: dst.read_json(k)
               for k in dst.list(f"{layout.run_dir(run_id)}/commits")}
    done = set(earlier)
    todo = [sid for sid in state.plan.shard_ids() if sid not in done]
    log.info("run %s: %d shards planned, %d committed, %d to do", run_id,
             state.plan.num_shards, len(done), len(todo))

    init_ray(config.address)
    num_workers = config.num_workers or default_num_workers(config.gpus_per_worker)
    segmenter = Segmenter(
        config.model, task=config.task, revision=config.revision, dtype=config.dtype,
        device=config.device, label_map=config.label_map, threshold=config.threshold,
        mask_threshold=config.mask_threshold,
        overlap_mask_area_threshold=config.overlap_mask_area_threshold,
        allow_pickle_weights=config.allow_pickle_weights, storage_options=config.storage_options)
    spec = WorkerSpec(source, segmenter, dst, state.run, config.batch_size, config.read_threads,
                      config.max_image_pixels,
                      torch_threads=cpu_threads_per_worker(num_workers, config.gpus_per_worker),
                      read_timeout=config.read_timeout, fault=_fault_shard())
    pool = ShardPool(spec, num_workers=num_workers, gpus_per_worker=config.gpus_per_worker,
                     cpus_per_worker=config.cpus_per_worker, max_attempts=config.max_attempts,
                     shard_timeout=config.shard_timeout, node_wait=config.node_wait)
    done_images = sum(m["images"] for m in earlier.values())
    progress = Progress(total=state.plan.num_images, initial=done_images,
                        enabled=config.progress, stream=sys.stderr)

    def loaded(workers: list[dict[str, Any]]) -> None:
        digests = {w["weights_sha256"] for w in workers}
        if len(digests) > 1:
            raise DestinationMismatch(f"workers loaded different weights for {config.model}: "
                                      "the model's files differ between nodes")
        record_settings(dst, config, digests.pop())

    with progress:
        result = pool.run(todo, progress.update, on_ready=loaded)
    if state.incremental:
        write_superseded(dst, run_id, state.run.created_at)
    write_merged_panoptic(dst)
    summary = _summarize(config, state, earlier, result, started, progress)
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


def _fault_shard() -> str | None:
    import os

    return os.environ.get("SEGPIPE_FAULT_SHARD") or None


def _summarize(config: JobConfig, state: RunState, earlier: dict[str, dict[str, Any]],
               result: Any, started: float, progress: Progress) -> dict[str, Any]:
    run_id = state.run.run_id
    markers = list({**earlier, **result.committed}.values())
    images = sum(m["images"] for m in markers)
    errors = sum(m["errors"] for m in markers)
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
        "annotated": sum(m["annotated"] for m in markers), "errors": errors,
        "segments": sum(m["segments"] for m in markers),
        "error_rate": errors / images if images else 0.0,
        "images_this_session": progress.processed,
        "images_per_s": round(progress.processed / elapsed, 3) if elapsed > 0 else 0.0,
        "workers_replaced": result.workers_replaced,
        # What this session's workers measured: time in the model's forward against the
        # time they were busy with shards, and peak memory of the driver and of the busiest worker.
        "worker_forward_s": round(sum(m.get("forward_s", 0.0) for m in result.committed.values()), 3),
        "worker_busy_s": round(busy_seconds(result.committed.values()), 3),
        "worker_peak_rss_mb": round(max((m.get("peak_rss_mb", 0.0) for m in result.committed.values()), default=0.0), 1),
        "driver_peak_rss_mb": round(peak_rss_mb(), 1),
    }


def busy_seconds(markers: Iterable[dict[str, Any]]) -> float:
    """Wall seconds the workers spent on shards: per worker, the union of its shards' spans
    (a worker reads its next shard while it computes this one, so spans overlap)."""
    spans: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for marker in markers:
        if "started_at" in marker:
            spans[marker.get("pid")].append((marker["started_at"], marker["finished_at"]))
    total = 0.0
    for worker_spans in spans.values():
        covered_to = float("-inf")
        for start, end in sorted(worker_spans):
            if end > covered_to:
                total += end - max(start, covered_to)
                covered_to = end
    return total
