"""Faults survived and exactly-once outputs, on a real local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segpipe.app.annotate import JobFailed, annotate
from segpipe.app.status import job_status
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.io.storage import Folder
from tests.support.images import write_images
from tests.support.outputs import check_contract, read_table
from tests.support.processes import shard_workers

pytestmark = pytest.mark.usefixtures("ray_cluster")


def commits(dst: Path) -> list[Path]:
    return sorted(dst.glob("_segpipe/runs/*/commits/*.json"))


def wait_until(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_killed_worker_loses_no_work(tmp_path, tiny_model):
    paths = write_images(tmp_path / "src", 16, seed=3)
    dst = tmp_path / "dst"
    killed: list[int] = []

    def kill_a_worker() -> None:
        wait_until(lambda: len(commits(dst)) >= 1)
        for pid, proc in shard_workers().items():  # never another test process's workers
            proc.send_signal(signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    summary = annotate(JobConfig(src=str(tmp_path / "src"), dst=str(dst), model=tiny_model,
                                 shard_size=1, batch_size=1, num_workers=1, progress=False))
    killer.join(timeout=5)
    assert killed, "no worker process was found to kill"
    assert summary["workers_replaced"] >= 1
    assert summary["status"] == "complete"
    check_contract(Folder(str(dst)), [str(p) for p in paths])


def _without_time(rows: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "created_at"} for r in rows),
                  key=lambda r: (r["image_id"], r.get("segment_id", 0)))


def test_killed_driver_resumes_to_identical_outputs(tmp_path, tiny_model):
    paths = write_images(tmp_path / "src", 12, seed=4)
    args = [str(tmp_path / "src"), "--model", tiny_model, "--shard-size", "1", "--batch-size", "1",
            "--num-workers", "1", "--no-progress"]
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert main(["annotate", args[0], str(clean), *args[1:]]) == 0

    env = {**os.environ, "RAY_ADDRESS": ""}
    log = tmp_path / "driver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "segpipe.cli", "annotate", args[0],
                                 str(resumed), *args[1:]], env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        # Generous: under a parallel test run on few cores, a fresh Ray and model take
        # minutes. A driver that ended first is not waited for.
        wait_until(lambda: len(commits(resumed)) >= 2 or proc.poll() is not None, timeout=420)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert len(commits(resumed)) >= 2, log.read_text(errors="replace")[-2000:]
    assert len(commits(resumed)) < 12, "the driver finished before it was killed"
    assert not (resumed / "panoptic.json").exists()

    assert main(["annotate", args[0], str(resumed), *args[1:]]) == 0
    assert (clean / "panoptic.json").read_bytes() == (resumed / "panoptic.json").read_bytes()
    clean_pngs = sorted(p.relative_to(clean) for p in clean.glob("panoptic/**/*.png"))
    assert clean_pngs == sorted(p.relative_to(resumed) for p in resumed.glob("panoptic/**/*.png"))
    for rel in clean_pngs:
        assert (clean / rel).read_bytes() == (resumed / rel).read_bytes()
    for table in ("segments", "images", "errors"):
        assert _without_time(read_table(Folder(str(clean)), table)) == _without_time(
            read_table(Folder(str(resumed)), table))
    check_contract(Folder(str(resumed)), [str(p) for p in paths])


def test_a_shard_that_always_fails_is_recorded_and_the_rest_commit(tmp_path, tiny_model, monkeypatch,
                                                                    capsys):
    write_images(tmp_path / "src", 6, seed=5)
    config = JobConfig(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model=tiny_model,
                       shard_size=2, num_workers=1, max_attempts=2, progress=False)
    monkeypatch.setenv("SEGPIPE_FAULT_SHARD", "00001-000001")
    with pytest.raises(JobFailed, match="00001-000001"):
        annotate(config)
    dst = Folder(config.dst)
    summary = json.loads(dst.read_bytes("_segpipe/runs/00001/summary.json"))
    assert summary["status"] == "incomplete"
    assert list(summary["failed_shards"]) == ["00001-000001"]
    assert "injected fault" in summary["failed_shards"]["00001-000001"]
    assert sorted(p.stem for p in commits(tmp_path / "dst")) == ["00001-000000", "00001-000002"]
    assert len(json.loads(dst.read_bytes("panoptic.json"))["images"]) == 4

    rc = main(["status", config.dst])
    assert rc == 0 and "2/3 committed" in capsys.readouterr().out

    # The CLI exits non-zero and names the shard.
    rc = main(["annotate", config.src, config.dst, "--model", tiny_model, "--shard-size", "2",
               "--num-workers", "1", "--max-attempts", "1", "--no-progress"])
    assert rc == 1 and "00001-000001" in capsys.readouterr().err

    monkeypatch.delenv("SEGPIPE_FAULT_SHARD")
    assert annotate(config)["status"] == "complete"
    assert len(read_table(dst, "images")) == 6


# --- reads and shards that never end -------------------------------------------------------------

def manifest_with_fifo(tmp_path: Path, count: int) -> tuple[Path, list[str], str]:
    """A manifest of `count` images with a FIFO named like an image among them: opening it
    for reading blocks until a writer comes, and none does."""
    paths = [str(p) for p in write_images(tmp_path / "src", count, seed=6)]
    fifo = tmp_path / "src" / "pipe.png"
    os.mkfifo(fifo)
    listed = [*paths[:2], str(fifo), *paths[2:]]
    manifest = tmp_path / "images.txt"
    manifest.write_text("\n".join(listed) + "\n")
    return manifest, paths, str(fifo)


@pytest.fixture(params=["local", "s3"])
def dst_url(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "dst")
    return f"s3://{request.getfixturevalue('bucket')}/dst"


@pytest.mark.timeout(240)
def test_a_read_that_never_returns_is_an_error_row_and_the_shard_goes_on(tmp_path, tiny_model,
                                                                         dst_url):
    manifest, paths, fifo = manifest_with_fifo(tmp_path, 4)
    summary = annotate(JobConfig(src=str(manifest), dst=dst_url, model=tiny_model, shard_size=5,
                                 batch_size=2, num_workers=1, read_timeout=2, progress=False))
    assert summary["status"] == "complete" and summary["shards"]["committed"] == 1
    dst = Folder(dst_url)
    errors = read_table(dst, "errors")
    assert [(e["image_uri"], e["stage"]) for e in errors] == [(fifo, "read")]
    assert fifo in errors[0]["message"] and "--read-timeout" in errors[0]["message"]
    # The images after the FIFO in the same shard were read and annotated.
    assert sorted(i["file_name"] for i in json.loads(dst.read_bytes("panoptic.json"))["images"]) == paths
    assert sorted(r["image_uri"] for r in read_table(dst, "images")) == sorted([*paths, fifo])


# The timeout leaves a healthy two-image shard room on a loaded machine (on S3 under three
# test processes it has taken over 3 s), so only the stuck shard's attempts replace workers.
@pytest.mark.timeout(300)
def test_a_shard_over_its_timeout_is_retried_on_a_new_worker_then_failed(tmp_path, tiny_model,
                                                                         dst_url):
    manifest, paths, fifo = manifest_with_fifo(tmp_path, 4)
    config = JobConfig(src=str(manifest), dst=dst_url, model=tiny_model, shard_size=2,
                       batch_size=2, num_workers=1, read_timeout=3600, shard_timeout=15,
                       max_attempts=2, progress=False)
    with pytest.raises(JobFailed, match="1 shard"):
        annotate(config)
    dst = Folder(dst_url)
    summary = json.loads(dst.read_bytes("_segpipe/runs/00001/summary.json"))
    (failed, message), = summary["failed_shards"].items()
    assert "--shard-timeout" in message
    assert summary["shards"] == {"planned": 3, "committed": 2, "failed": 1}
    assert summary["workers_replaced"] == 2  # one per attempt: a stuck read ends with its worker
    held = [ref["uri"] for ref in json.loads(
        dst.read_bytes(f"_segpipe/runs/00001/plan/{failed}.json"))["images"]]
    assert fifo in held
    # Every image of the other shards was annotated once; none of the failed one's.
    committed = sorted(r["image_uri"] for r in read_table(dst, "images"))
    assert committed == sorted(set(paths) - set(held))
    # While no summary says it (a session killed after the pool), the failed marker does.
    dst.delete("_segpipe/runs/00001/summary.json")
    assert job_status(dst)["runs"][0]["failed_shards"] == [failed]


def test_ordered_map_does_not_wait_for_a_call_that_never_returns():
    from segpipe.core.concurrency import ordered_map

    release = threading.Event()

    def read(item: int) -> int:
        if item == 1:
            release.wait()  # a read that never returns, until the test ends
        return item

    results = ordered_map(read, range(4), threads=2)
    try:
        assert next(results) == (0, 0)
        closer = threading.Thread(target=results.close, daemon=True)
        closer.start()
        closer.join(timeout=5)
        assert not closer.is_alive(), "closing the map waited for the stuck call"
    finally:
        release.set()


def test_a_process_exits_though_a_read_it_started_never_returns(tmp_path):
    """A Ray worker whose read hangs must still exit when it is told to (else it outlives
    its cluster): the reading threads are never joined at exit."""
    fifo, image = tmp_path / "pipe.png", tmp_path / "img.png"
    os.mkfifo(fifo)
    image.write_bytes(b"png")
    script = (
        "import sys, time\n"
        "from segpipe.core.concurrency import ordered_map\n"
        "read = lambda path: open(path, 'rb').read()\n"
        "results = ordered_map(read, sys.argv[1:], threads=1)\n"
        "next(results)  # the image; the FIFO's read has started, and blocks\n"
        "results.close()\n"
        "time.sleep(0.2)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(image), str(fifo)],
                          timeout=60, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr


# --- execution options ---------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "message"), [
    ("gpus_per_worker", -1.0, "--gpus-per-worker must be 0 or more"),
    ("cpus_per_worker", -0.5, "--cpus-per-worker must be 0 or more"),
    ("gpus_per_worker", float("nan"), "--gpus-per-worker must be a number"),
    ("max_image_pixels", -1, "--max-image-pixels must be at least 1"),
    ("max_image_pixels", 0, "--max-image-pixels must be at least 1"),
    ("threshold", 7.0, "--threshold must be between 0 and 1"),
    ("mask_threshold", -0.1, "--mask-threshold must be between 0 and 1"),
    ("overlap_mask_area_threshold", 1.5, "--overlap-mask-area-threshold must be between 0 and 1"),
    ("max_error_rate", 2.0, "--max-error-rate must be between 0 and 1"),
    ("batch_size", 0, "--batch-size must be at least 1"),
    ("batch_size", 2.5, "--batch-size must be an integer"),
    ("read_threads", True, "--read-threads must be an integer"),
    ("num_workers", 0, "--num-workers must be at least 1"),
    ("max_attempts", -3, "--max-attempts must be at least 1"),
    ("read_timeout", 0.0, "--read-timeout must be more than 0 seconds"),
    ("shard_timeout", -1.0, "--shard-timeout must be more than 0 seconds"),
    ("node_wait", float("inf"), "--node-wait must be a number"),
])
def test_a_numeric_option_out_of_range_is_refused_naming_its_flag(field, value, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(src="a", dst="b", **{field: value})


def test_every_numeric_option_has_a_rule():
    import dataclasses
    import typing

    from segpipe.core.config import NUMERIC_CHECKS

    hints = typing.get_type_hints(JobConfig)
    numeric = {f.name for f in dataclasses.fields(JobConfig)
               if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],))}
    assert numeric - set(NUMERIC_CHECKS) == set()
    assert JobConfig(src="a", dst="b", gpus_per_worker=0, cpus_per_worker=0).gpus_per_worker == 0


def test_the_cli_refuses_a_meaningless_threshold_before_starting(tmp_path, capsys):
    rc = main(["annotate", str(tmp_path / "src"), str(tmp_path / "dst"), "--threshold", "7"])
    assert rc == 1 and "--threshold must be between 0 and 1, not 7" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_workers_that_take_no_gpu_count_as_cpu_workers():
    from segpipe.runtime.cluster import workers_for

    assert workers_for(32, 4, gpus_per_worker=0) == 4  # on the CPU: one per 8 CPUs
    assert workers_for(32, 4, gpus_per_worker=0.5) == 8
    assert workers_for(2, 0, gpus_per_worker=1) == 1


def test_workers_get_only_allow_listed_variables():
    from segpipe.runtime.cluster import forwarded_env

    environ = {"AWS_ENDPOINT_URL": "http://s3.local", "AWS_ENDPOINT_URL_S3": "http://s3.local",
               "AWS_REGION": "eu-west-1", "AWS_PROFILE": "lake", "AWS_MAX_ATTEMPTS": "5",
               "HF_HOME": "/models", "SEGPIPE_CACHE": "/cache",
               "AWS_SECRET_ACCESS_KEY": "x", "AWS_SESSION_TOKEN": "x", "AWS_ACCESS_KEY_ID": "x",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN": "x", "AWS_WEB_IDENTITY_TOKEN_FILE": "x",
               "FSSPEC_S3_SECRET": "x", "FSSPEC_S3_KEY": "x", "FSSPEC_GCS": "x", "HF_TOKEN": "x",
               "HUGGING_FACE_HUB_TOKEN": "x", "SEGPIPE_FAULT_SHARD": "x", "PATH": "/bin"}
    assert forwarded_env(environ) == {k: v for k, v in environ.items() if v != "x" and k != "PATH"}
