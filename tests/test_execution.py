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

import psutil
import pytest

from segpipe.annotate import JobFailed, annotate
from segpipe.cli import main
from segpipe.config import JobConfig
from segpipe.storage import Folder
from tests.conftest import write_images
from tests.outputs import check_contract, read_table

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
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("ShardWorker" in part for part in proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.info["pid"])

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
    proc = subprocess.Popen([sys.executable, "-m", "segpipe.cli", "annotate", args[0], str(resumed),
                             *args[1:]], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(commits(resumed)) >= 2, timeout=180)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
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
