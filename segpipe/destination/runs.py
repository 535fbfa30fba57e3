"""Runs of a destination: which run an invocation works on, and what guards the destination.

A run is recorded (`run.json`) when it starts, with its config and whether it is
incremental; its plan follows. The settings that guard the destination (`job.json`) are
written only once the model has loaded and the plan exists, so a failed first attempt
never locks a destination.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from segpipe.core.config import JobConfig
from segpipe.core.errors import SegpipeError
from segpipe.core.items import RunContext
from segpipe.destination import layout
from segpipe.destination.committed import committed_shards
from segpipe.destination.incremental import seen_filter
from segpipe.destination.plan import Plan, read_plan, write_plan
from segpipe.io.storage import Folder, redact_uri

log = logging.getLogger(__name__)


def list_runs(dst: Folder) -> list[str]:
    """Run ids recorded at `dst`, oldest first: the run folders that hold a run record. (A
    full listing of the runs folder would also list every plan, fragment and marker.)"""
    return [run for run in dst.children(layout.RUNS_DIR) if dst.exists(layout.run_record(run))]


class DestinationMismatch(SegpipeError, RuntimeError):
    """The destination holds committed work made with other settings or from another source."""


# What decides a run's plan: another source plans other images.
SOURCE_FIELDS = ("src", "source_format", "image_column", "uri_column", "id_column")
# Recorded once the model has loaded; unknown (None) when the checkpoint's files were not found.
WEIGHTS_FIELD = "weights_sha256"
# What `--new-model` may change on a destination that holds work: the model, nothing else.
MODEL_FIELDS = ("model", "revision", WEIGHTS_FIELD)


@dataclass(frozen=True)
class RunState:
    run: RunContext
    plan: Plan
    incremental: bool  # as recorded when the run started, whatever a resume's flags say
    new_model: bool = False  # the run re-labels the destination with a new model version


def stored_settings(dst: Folder) -> dict[str, Any] | None:
    return dst.read_json(layout.JOB)["fingerprint"] if dst.exists(layout.JOB) else None


def setting_differences(stored: dict[str, Any], wanted: dict[str, Any],
                        allowed: tuple[str, ...] = ()) -> list[str]:
    """What differs, as "name: old -> new", leaving out the `allowed` settings. A setting
    that one side does not record (a destination written before segpipe recorded it,
    weights not found) is not compared."""
    return [f"{k}: {stored[k]!r} -> {wanted[k]!r}" for k in sorted(set(stored) & set(wanted))
            if stored[k] != wanted[k] and k not in allowed
            and not (k == WEIGHTS_FIELD and None in (stored[k], wanted[k]))]


def allowed_changes(config: JobConfig) -> tuple[str, ...]:
    return MODEL_FIELDS if config.new_model else ()


def check_settings(dst: Folder, config: JobConfig) -> None:
    """Refuse settings other than those of the committed work at `dst`.

    A destination with nothing committed accepts new settings: a first attempt that failed
    (a mistyped model) must not lock it. Its unfinished runs are discarded, since they were
    planned and recorded for the old settings.
    """
    stored = stored_settings(dst)
    diffs = setting_differences(stored, config.fingerprint(), allowed_changes(config)) if stored else []
    if not diffs:
        return
    _refuse_if_committed(dst, config, diffs)
    log.warning("%s has no committed shard; its settings are replaced (%s)", config.dst,
                ", ".join(diffs))
    for run_id in list_runs(dst):
        discard_run(dst, run_id)


def record_settings(dst: Folder, config: JobConfig, weights_sha256: str | None) -> None:
    """Store the settings that guard `dst`, once the model has loaded and the plan is written.

    The weights' digest is known only now: the same model path can hold retrained weights,
    and a resume with them would mix two models' outputs. Called again as later workers load,
    it writes only when there is something new to record.
    """
    wanted = {**config.fingerprint(), WEIGHTS_FIELD: weights_sha256}
    stored = stored_settings(dst)
    if stored is not None:
        diffs = setting_differences(stored, wanted, allowed_changes(config))
        if diffs:
            _refuse_if_committed(dst, config, diffs)
        elif all(k in stored and (v is None or stored[k] == v) for k, v in wanted.items()):
            return
    blob = json.dumps(wanted, sort_keys=True).encode()
    dst.write_json(layout.JOB, {"fingerprint": wanted,
                                "fingerprint_hash": hashlib.sha256(blob).hexdigest()[:16]})


def _refuse_if_committed(dst: Folder, config: JobConfig, diffs: list[str]) -> None:
    if committed_shards(dst):
        raise DestinationMismatch(
            f"{config.dst} holds outputs made with different settings ({', '.join(diffs)}). "
            "Write to a new destination, or delete this one to start over.")


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
        new_version = config.new_model and _model_of(record["config"]) != _model_of(config.to_dict())
        if new_version and source_of(record["config"]) != source_of(config.to_dict()):
            raise DestinationMismatch(_other_source(config, latest, record, "complete"))
        if not (config.incremental and ended is not None) and not new_version:
            if source_of(record["config"]) != source_of(config.to_dict()):
                if ended != "complete" and not committed_shards(dst, latest):
                    log.warning("run %s of %s committed nothing and was planned from another "
                                "source; it is planned again", latest, config.dst)
                    discard_run(dst, latest)
                    return prepare_run(dst, config, source)
                raise DestinationMismatch(_other_source(config, latest, record, ended))
            return _open_run(dst, config, source, record)
    record = {"run_id": f"{len(runs) + 1:05d}", "started_at": datetime.now(timezone.utc).isoformat(),
              "config": config.to_dict(), "incremental": config.incremental}
    if config.new_model and runs:  # recorded: this run is a new model version's re-labeling
        previous = dst.read_json(layout.run_record(runs[-1]))["config"]
        record["new_model"] = {"replaces_run": runs[-1], "previous": _model_of(previous),
                               "model": _model_of(config.to_dict())}
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
    return RunState(run, plan, incremental, new_model=bool(record.get("new_model")))


def _model_of(config: dict[str, Any]) -> dict[str, Any]:
    return {"model": config.get("model"), "revision": config.get("revision")}


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
