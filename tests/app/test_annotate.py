"""The main job end to end on a real local Ray: local and S3 sources and destinations."""

from __future__ import annotations

import dataclasses
import time

import pytest

from segpipe.app.annotate import annotate
from segpipe.cli import build_parser, main
from segpipe.core.config import JobConfig
from segpipe.destination.runs import DestinationMismatch
from segpipe.io.storage import Folder, filesystem
from tests.support.httpserver import http_server
from tests.support.images import write_images
from tests.support.outputs import check_contract, read_table
from tests.support.processes import shard_workers

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_local_to_local(tmp_path, tiny_model):
    paths = write_images(tmp_path / "src", 7)
    dst = tmp_path / "dst"
    summary = annotate(JobConfig(src=str(tmp_path / "src"), dst=str(dst), model=tiny_model,
                                 batch_size=3, shard_size=3, num_workers=1, progress=False))
    assert summary["status"] == "complete"
    assert summary["shards"] == {"planned": 3, "committed": 3, "failed": 0}
    phases = summary["phases"]  # the fixed costs, in the order a run meets them
    assert phases["plan_s"] > 0 and phases["merge_s"] > 0
    assert 0 < phases["to_first_worker_ready_s"] <= phases["to_first_shard_s"] + 1.0
    assert phases["to_first_shard_s"] < phases["to_pool_end_s"]
    out = check_contract(Folder(str(dst)), [str(p) for p in paths])
    assert summary["segments"] == len(out["segments"]) > 0
    assert all(r["review_status"] == "pending" for r in out["segments"])


def test_workers_load_the_model_while_the_source_is_planned(tmp_path, tiny_model):
    """The manifest's server answers only once a shard worker is up: planning cannot end
    before that, so the job ends in time only if its workers start beside its planning."""
    images = {f"/{p.name}": p.read_bytes() for p in write_images(tmp_path / "images", 3, seed=6)}
    earlier = set(shard_workers())  # of earlier tests, maybe not gone yet
    started_while_planning: list[int] = []

    def answer_once_a_worker_runs(path: str) -> None:
        deadline = time.monotonic() + 180
        while path == "/images.txt" and not started_while_planning and time.monotonic() < deadline:
            started_while_planning.extend(set(shard_workers()) - earlier)
            time.sleep(0.05)

    manifest = "".join(f"{name.lstrip('/')}\n" for name in images).encode()
    with http_server({**images, "/images.txt": manifest},
                     before_reply=answer_once_a_worker_runs) as served:
        summary = annotate(JobConfig(
            src=f"{served.url}/images.txt", dst=str(tmp_path / "dst"), model=tiny_model,
            shard_size=2, num_workers=1, progress=False, allow_uri_schemes="http",
            allow_private_hosts=True))
    assert started_while_planning, "no shard worker started before the planning ended"
    assert summary["status"] == "complete" and summary["annotated"] == 3
    assert summary["phases"]["to_first_worker_ready_s"] > 0
    check_contract(Folder(str(tmp_path / "dst")), [f"{served.url}{name}" for name in images])


def test_s3_to_s3(tmp_path, tiny_model, bucket):
    paths = write_images(tmp_path / "src", 5, seed=1, ext="jpg")
    fs, _ = filesystem(f"s3://{bucket}")
    for p in paths:
        fs.put_file(str(p), f"{bucket}/raw/{p.name}")
    fs.pipe_file(f"{bucket}/raw/notes.txt", b"not an image")  # ignored: not an image name
    src, dst = f"s3://{bucket}/raw/", f"s3://{bucket}/prelabels/run-a"
    rc = main(["annotate", src, dst, "--model", tiny_model, "--batch-size", "2",
               "--shard-size", "2", "--num-workers", "1", "--no-progress"])
    assert rc == 0
    check_contract(Folder(dst), [f"s3://{bucket}/raw/{p.name}" for p in paths])


def test_rerun_skips_committed_and_refuses_other_settings(tmp_path, tiny_model):
    write_images(tmp_path / "src", 4, seed=2)
    config = JobConfig(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model=tiny_model,
                       shard_size=2, num_workers=1, progress=False)
    first = annotate(config)
    before = read_table(Folder(config.dst), "segments")
    again = annotate(config)
    assert again["run_id"] == first["run_id"]
    assert again["images_this_session"] == 0
    assert read_table(Folder(config.dst), "segments") == before
    with pytest.raises(DestinationMismatch, match="task"):
        annotate(config.replace(task="semantic"))


def test_empty_source_is_a_clear_error(tmp_path, tiny_model, capsys):
    (tmp_path / "src").mkdir()
    rc = main(["annotate", str(tmp_path / "src"), str(tmp_path / "dst"), "--model", tiny_model,
               "--no-progress"])
    assert rc == 1
    assert "no images found at" in capsys.readouterr().err


def test_help_explains_every_option():
    parser = build_parser()
    annotate_parser = parser._subparsers._group_actions[0].choices["annotate"]  # noqa: SLF001
    dests = {a.dest for a in annotate_parser._actions if a.help}  # noqa: SLF001
    fields = {f.name for f in dataclasses.fields(JobConfig)}
    assert fields <= dests, f"options without help: {sorted(fields - dests)}"
