"""Where everything lives under a destination. Every key derives from run, shard and image ids.

    DST/panoptic.json                       merged COCO panoptic (committed shards only)
    DST/panoptic/<run>/<image_id>.png            panoptic id maps
    DST/semantic/<run>/<image_id>.png            semantic label maps (task semantic)
    DST/tables/<table>/run=<run>/<shard>.parquet
    DST/_segpipe/job.json                   the config fingerprint guarding DST
    DST/_segpipe/runs/<run>/run.json        the run record (start time, config)
    DST/_segpipe/runs/<run>/plan/<shard>.json, plan.json (written last: plan complete)
    DST/_segpipe/runs/<run>/fragments/<shard>.json   COCO fragment of one shard
    DST/_segpipe/runs/<run>/commits/<shard>.json     commit marker, written last
    DST/_segpipe/runs/<run>/failed/<shard>.json      a shard that ran out of attempts
    DST/_segpipe/runs/<run>/summary.json
    DST/reviewed/panoptic.json              reviewers' corrected labels, one COCO-panoptic dataset
    DST/reviewed/panoptic/<import>/<image_id>.png   their id maps, by the import that wrote them
    DST/tables/reviews/import=<import>/reviews.parquet   one row per segment outcome of an import
"""

from __future__ import annotations

from segpipe.core.identity import image_png_key

META = "_segpipe"
JOB = f"{META}/job.json"
MERGED_PANOPTIC = "panoptic.json"
MERGED_PNG_DIR = "panoptic"  # what the merged panoptic.json's PNG file names are below
# The corrected labels imported from review tools: a standard COCO-panoptic folder.
REVIEWED_DIR = "reviewed"
REVIEWED_PANOPTIC = f"{REVIEWED_DIR}/panoptic.json"
REVIEWED_PNG_DIR = f"{REVIEWED_DIR}/panoptic"
REVIEWS_TABLE = "reviews"


def reviewed_png_name(import_id: str, image_id: int) -> str:
    """A reviewed PNG's name below REVIEWED_PNG_DIR (the annotation's file_name). Keyed by
    import, so an import never overwrites a PNG that the current panoptic.json points at."""
    return f"{import_id}/{image_png_key(image_id)}"


def reviews_file(import_id: str) -> str:
    return f"{table_dir(REVIEWS_TABLE)}/import={import_id}/reviews.parquet"


RUNS_DIR = f"{META}/runs"


def run_dir(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}"


def run_record(run_id: str) -> str:
    return f"{run_dir(run_id)}/run.json"


def plan_shard(run_id: str, shard_id: str) -> str:
    return f"{run_dir(run_id)}/plan/{shard_id}.json"


def plan_done(run_id: str) -> str:
    return f"{run_dir(run_id)}/plan.json"


def fragment(run_id: str, shard_id: str) -> str:
    return f"{run_dir(run_id)}/fragments/{shard_id}.json"


def commits_dir(run_id: str) -> str:
    return f"{run_dir(run_id)}/commits"


def commit(run_id: str, shard_id: str) -> str:
    return f"{commits_dir(run_id)}/{shard_id}.json"


def parse_commit(key: str) -> tuple[str, str] | None:
    """(run id, shard id) of a commit marker's key; None for any other key."""
    parts = _run_key(key, 5)
    if parts and parts[3] == "commits" and parts[4].endswith(".json"):
        return parts[2], parts[4][: -len(".json")]
    return None


def _run_key(key: str, depth: int) -> list[str] | None:
    """`key`'s parts when it lies `depth` parts deep under `_segpipe/runs/`."""
    parts = key.split("/")
    return parts if len(parts) == depth and parts[:2] == [META, "runs"] else None


def failed_dir(run_id: str) -> str:
    return f"{run_dir(run_id)}/failed"


def failed(run_id: str, shard_id: str) -> str:
    return f"{failed_dir(run_id)}/{shard_id}.json"


def summary(run_id: str) -> str:
    return f"{run_dir(run_id)}/summary.json"


# Tables partitioned by run (superseded is written once per run, not per shard).
RUN_TABLES = ("segments", "images", "errors", "superseded")


def table_dir(table: str) -> str:
    """The root of one table's Hive-partitioned dataset."""
    return f"tables/{table}"


def table_partition(table: str, run_id: str) -> str:
    return f"{table_dir(table)}/run={run_id}"


def table_file(table: str, run_id: str, shard_id: str) -> str:
    """One shard's file of a table (the superseded table has one file per run instead)."""
    return f"{table_partition(table, run_id)}/{shard_id}.parquet"


def superseded_file(run_id: str) -> str:
    return f"{table_partition('superseded', run_id)}/superseded.parquet"


def run_prefixes(run_id: str) -> list[str]:
    """Every prefix holding a run's files: its metadata, table partitions and PNGs."""
    return [run_dir(run_id), *(table_partition(t, run_id) for t in RUN_TABLES),
            _png_dir("panoptic", run_id), _png_dir("semantic", run_id)]


def _png_dir(kind: str, run_id: str) -> str:
    return f"{kind}/{run_id}"


def panoptic_png(run_id: str, image_id: int) -> str:
    """Partitioned by run, so a re-annotated image never overwrites an earlier run's PNG."""
    return f"{_png_dir('panoptic', run_id)}/{image_png_key(image_id)}"


def semantic_png(run_id: str, image_id: int) -> str:
    return f"{_png_dir('semantic', run_id)}/{image_png_key(image_id)}"
