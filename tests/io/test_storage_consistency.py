"""What a destination shows is what is stored: fresh listings and reads on object stores,
files replaced only whole, temporary files that no destination path can hide behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest

from segpipe.app.annotate import annotate
from segpipe.app.status import job_status
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.destination import layout
from segpipe.destination.merge import committed_shards, write_merged_panoptic
from segpipe.io.storage import Folder, filesystem
from tests.runtime.test_execution import _without_time, wait_until
from tests.support.destinations import annotated
from tests.support.images import write_images
from tests.support.outputs import check_contract, read_panoptic, read_table

NUM_IMAGES = 4


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A root for destinations: a local folder, or a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path)
    return f"s3://{request.getfixturevalue('bucket')}"


def _s3(endpoint: str):  # noqa: ANN202 - a boto3 client: another process's view of the bucket
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _all_paths(folder: Folder) -> set[str]:
    """Every file under `folder`, hidden ones included (Folder.list leaves those out)."""
    fs = folder.fs
    return set(fs.find(folder.root)) if fs.exists(folder.root) else set()


def _upload(local: Path, url: str) -> None:
    fs, path = filesystem(url)
    fs.put(f"{local}/", f"{path}/", recursive=True)


# --- 1. listings and reads on S3 are never served from a stale cache ---------------------


def test_a_key_written_by_another_client_after_a_listing_is_seen(bucket, s3_endpoint):
    dst = Folder(f"s3://{bucket}/dst")
    dst.write_json("runs/1/fragments/a.json", {"a": 1})
    assert dst.list("runs") == ["runs/1/fragments/a.json"]

    _s3(s3_endpoint).put_object(Bucket=bucket, Key="dst/runs/1/fragments/b.json", Body=b'{"b":2}')

    assert dst.list("runs") == ["runs/1/fragments/a.json", "runs/1/fragments/b.json"]
    assert dst.exists("runs/1/fragments/b.json")
    assert dst.read_json("runs/1/fragments/b.json") == {"b": 2}


def test_children_are_one_level_and_fresh(where, s3_endpoint):
    from segpipe.destination.runs import list_runs

    dst = Folder(f"{where}/dst")
    assert dst.children("_segpipe/runs") == [] and list_runs(dst) == []
    dst.write_json(layout.run_record("00001"), {"run_id": "00001"})
    dst.write_json(layout.plan_shard("00001", "00001-000000"), {})
    dst.write_json(layout.commit("00002", "00002-000000"), {})  # a run folder without a record
    dst.write_bytes("_segpipe/runs/.hidden", b"")
    assert dst.children("_segpipe/runs") == ["00001", "00002"]
    assert dst.children("_segpipe/runs/00001") == ["plan", "run.json"]
    assert list_runs(dst) == ["00001"]
    dst.write_json(layout.run_record("00002"), {"run_id": "00002"})
    assert list_runs(dst) == ["00001", "00002"]  # a new run is seen at once (no stale listing)


def test_a_failed_read_names_its_type_and_what_was_done(bucket, tmp_path, capsys):
    dst = Folder(f"s3://{bucket}/dst")
    dst.write_json(layout.commit("00001", "00001-000000"), {"images": 0})
    out = tmp_path / "instances.json"
    rc = main(["export", dst.url, "--format", "coco-instance", "--out", str(out)])
    err = capsys.readouterr().err
    fragment = dst.url_of(layout.fragment("00001", "00001-000000"))
    assert rc == 1 and f"error: FileNotFoundError: {fragment[5:]}; while reading {fragment}" in err
    assert not out.exists()


@pytest.mark.slow  # a driver of its own starts a local Ray: over a minute on two cores
@pytest.mark.usefixtures("ray_cluster")
def test_a_killed_driver_resumes_on_s3_to_identical_outputs(tmp_path, tiny_model, bucket,
                                                           s3_endpoint, capsys):
    images = write_images(tmp_path / "src", 6, seed=6)
    src = f"s3://{bucket}/in"
    _upload(tmp_path / "src", src)
    options = ["--model", tiny_model, "--shard-size", "1", "--batch-size", "1",
               "--num-workers", "1", "--no-progress"]
    clean, resumed = f"s3://{bucket}/clean", f"s3://{bucket}/killed"
    assert main(["annotate", src, clean, *options]) == 0

    s3 = _s3(s3_endpoint)

    def commits() -> int:  # counted by another client, so that no cache of ours is involved
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="killed/")
        return sum("/commits/" in o["Key"] for page in pages for o in page.get("Contents", []))

    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "segpipe.cli", "annotate", src, resumed,
                             *options], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: commits() >= 2, timeout=300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert commits() < len(images), "the driver finished before it was killed"
    assert not Folder(resumed).exists(layout.MERGED_PANOPTIC)

    capsys.readouterr()
    assert main(["annotate", src, resumed, *options]) == 0, capsys.readouterr().err
    a, b = Folder(clean), Folder(resumed)
    coco_a, coco_b = read_panoptic(a), read_panoptic(b)
    for section in ("images", "annotations"):
        assert coco_a[section] == coco_b[section], section
    for table in ("segments", "images", "errors"):
        assert _without_time(read_table(a, table)) == _without_time(read_table(b, table)), table
    check_contract(b, [f"{src}/{p.name}" for p in images])


# --- 2. a merge that does not finish leaves the previous merged file ---------------------


@pytest.fixture
def merged_dst(where: str, tmp_path_factory, tiny_model, ray_cluster) -> Folder:
    """A copy of an annotated destination (three committed shards) with its panoptic.json."""
    url = f"{where}/merged"
    _upload(annotated(tmp_path_factory, tiny_model), url)
    return Folder(url)


def test_a_merge_that_fails_midway_leaves_the_old_file_whole(merged_dst):
    good = merged_dst.read_bytes(layout.MERGED_PANOPTIC)
    assert json.loads(good)["images"]
    shards = list(committed_shards(merged_dst))
    assert len(shards) == 3
    # The last fragment is unreadable: the images of the first two are streamed out already.
    merged_dst.write_bytes(layout.fragment(*shards[-1]), b'{"images": [')
    before = _all_paths(merged_dst)

    with pytest.raises(json.JSONDecodeError):
        write_merged_panoptic(merged_dst)

    assert merged_dst.read_bytes(layout.MERGED_PANOPTIC) == good
    assert _all_paths(merged_dst) == before  # no temporary file left behind


def test_an_interrupted_atomic_write_changes_nothing(where):
    dst = Folder(f"{where}/atomic")
    dst.write_bytes("out/file.json", b'{"old": true}')
    before = _all_paths(dst)

    with pytest.raises(KeyboardInterrupt), dst.open_atomic("out/file.json") as out:
        out.write('{"new": [')
        raise KeyboardInterrupt  # Ctrl-C while the file is streamed out

    assert dst.read_bytes("out/file.json") == b'{"old": true}'
    assert _all_paths(dst) == before
    with dst.open_atomic("out/file.json") as out:
        out.write('{"new": []}')
    assert dst.read_json("out/file.json") == {"new": []}
    assert _all_paths(dst) == before


# --- 3. a destination path containing ".tmp-" -------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_a_destination_named_like_a_temporary_file_shows_its_outputs(where, tmp_path,
                                                                    tiny_model):
    write_images(tmp_path / "src", NUM_IMAGES, seed=7)
    config = JobConfig(src=str(tmp_path / "src"), dst=f"{where}/job.tmp-7/out", model=tiny_model,
                       shard_size=2, batch_size=2, num_workers=1, progress=False)
    first = annotate(config)
    dst = Folder(config.dst)

    assert first["status"] == "complete" and first["images"] == NUM_IMAGES
    assert len(read_panoptic(dst)["images"]) == NUM_IMAGES
    runs = job_status(dst)["runs"]
    assert [(r["run_id"], r["shards"]["committed"]) for r in runs] == [("00001", 2)]
    again = annotate(config)
    assert again["images_this_session"] == 0 and again["images"] == NUM_IMAGES


# --- suspected: two threads writing one key ----------------------------------------------


def _write_at_once(dst: Folder, key: str, payloads: list[bytes]) -> list[BaseException]:
    """Each payload written to `key` on its own thread, all released at once; their errors."""
    start = threading.Barrier(len(payloads))
    failures: list[BaseException] = []

    def write(data: bytes) -> None:
        start.wait()
        try:
            dst.write_bytes(key, data)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_two_threads_writing_one_key_each_publish_a_whole_file(tmp_path):
    dst = Folder(str(tmp_path / "dst"))
    payloads = [bytes([n]) * (4 << 20) for n in (1, 2)]
    for _ in range(10):
        assert _write_at_once(dst, "same/key.bin", payloads) == []
        assert dst.read_bytes("same/key.bin") in payloads
    assert os.listdir(tmp_path / "dst" / "same") == ["key.bin"]
