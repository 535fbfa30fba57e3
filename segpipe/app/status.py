"""`segpipe status`: what a destination holds, from its plan, commit markers and summaries."""

from __future__ import annotations

from typing import Any

from segpipe.destination import layout
from segpipe.destination.committed import committed_shards
from segpipe.destination.plan import read_plan
from segpipe.destination.runs import list_runs
from segpipe.io.storage import Folder


def job_status(dst: Folder) -> dict[str, Any]:
    runs = list_runs(dst)
    out: dict[str, Any] = {"dst": dst.url, "runs": []}
    for run_id in runs:
        plan = read_plan(dst, run_id)
        committed = [sid for _, sid in committed_shards(dst, run_id)]
        # Failed markers outlive a later session that commits the shard: committed wins.
        failed = {key.rsplit("/", 1)[1][: -len(".json")]
                  for key in dst.list(layout.failed_dir(run_id))} - set(committed)
        summary = dst.read_json(layout.summary(run_id)) if dst.exists(layout.summary(run_id)) else None
        images_done = sum(dst.read_json(layout.commit(run_id, sid))["images"] for sid in committed)
        num_shards = plan.num_shards if plan else None
        failed_now = sorted((summary or {}).get("failed_shards", {})) if summary else sorted(failed)
        out["runs"].append({
            "run_id": run_id,
            "planned": plan is not None,
            "shards": {"planned": num_shards, "committed": len(committed),
                       "failed": len(failed_now),
                       "pending": None if num_shards is None else num_shards - len(committed)},
            "images": {"planned": plan.num_images if plan else None, "committed": images_done},
            "failed_shards": failed_now,
            "last_summary": summary,
        })
    return out


def format_status(status: dict[str, Any]) -> str:
    lines = [f"destination {status['dst']}"]
    if not status["runs"]:
        lines.append("  no runs yet")
    for run in status["runs"]:
        s, i = run["shards"], run["images"]
        lines.append(f"run {run['run_id']}: shards {s['committed']}/{s['planned']} committed, "
                     f"{s['failed']} failed, {s['pending']} pending; images {i['committed']}/{i['planned']}")
        summary = run["last_summary"]
        if summary:
            lines.append(f"  last session: {summary['status']}, {summary['images_this_session']} images "
                         f"in {summary['duration_s']:.1f}s ({summary['images_per_s']} images/s), "
                         f"{summary['errors']} errors")
        for sid in run["failed_shards"]:
            lines.append(f"  failed shard {sid}")
    return "\n".join(lines)


def run_rows(dst: Folder) -> list[dict[str, Any]]:
    """One row per run: when, how many images and errors, which model, how long."""
    rows = []
    for run in job_status(dst)["runs"]:
        run_id = run["run_id"]
        started = dst.read_json(layout.run_record(run_id))
        summary = run["last_summary"] or {}
        rows.append({
            "run_id": run_id, "started_at": started["started_at"],
            "finished_at": summary.get("finished_at"), "status": summary.get("status", "running"),
            "incremental": started.get("incremental", False),
            "images": summary.get("images", run["images"]["committed"]),
            "errors": summary.get("errors"), "segments": summary.get("segments"),
            "model": started["config"].get("model"), "task": started["config"].get("task"),
            "duration_s": summary.get("duration_s"),
        })
    return rows


def format_runs(rows: list[dict[str, Any]]) -> str:
    header = f"{'run':<7} {'started (UTC)':<26} {'status':<11} {'images':>7} {'errors':>7} {'seconds':>8}  model"
    lines = [header]
    for r in rows:
        seconds = "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}"
        errors = "-" if r["errors"] is None else str(r["errors"])
        lines.append(f"{r['run_id']:<7} {r['started_at'][:26]:<26} {r['status']:<11} "
                     f"{r['images']:>7} {errors:>7} {seconds:>8}  {r['model']} ({r['task']})")
    return "\n".join(lines)
