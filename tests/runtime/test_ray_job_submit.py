"""`ray job submit` of a job spec to a real Ray head with its dashboard, as KubeRay's submitter
does, and the enrichment CronJob's own submit script run against the same head."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.images import write_images

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
DEMO_SPEC = str(ROOT / "jobs" / "demo.yaml")
CRONJOB = ROOT / "infra" / "kuberay" / "cronjob-enrich.yaml"
JOB_TIMEOUT_S = 480


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def segpipe_command() -> list[str]:
    """The console script where the project is installed (make install), else the same entry
    point by module; either way the job finds it through the head's environment."""
    return ["segpipe"] if (BIN / "segpipe").exists() else [sys.executable, "-m", "segpipe.cli"]


def stop_head(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes `ray start --block` stop the Ray processes it started; anything left is in
    the process group this test created. (`ray stop` would stop every Ray of this user.)"""
    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head with its dashboard on ports and a temp dir of its own, so that it neither
    meets nor stops any other Ray on the machine; yields (dashboard address, environment)."""
    # Ray's socket paths must fit in 107 bytes: a short temp dir, not pytest's tmp_path.
    temp = tempfile.mkdtemp(prefix="segpipe-ray-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               # the job driver and the workers import segpipe from this checkout
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
               # token auth on, as the manifests set it, with a token of this test's own
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    dashboard = free_port()
    log_path = Path(temp) / "ray-start.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={free_port()}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
             f"--ray-client-server-port={free_port()}", "--node-ip-address=127.0.0.1",
             "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_jobs_api(address, env["RAY_AUTH_TOKEN"], head, log_path)
        yield address, env
    finally:
        stop_head(head)
        shutil.rmtree(temp, ignore_errors=True)


def wait_for_jobs_api(address: str, token: str, head: subprocess.Popen[bytes],
                      log_path: Path) -> None:
    request = urllib.request.Request(f"{address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited {head.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the Ray dashboard's job API did not come up:\n{log_path.read_text()[-3000:]}")


def overrides(dst: Path, model: str) -> list[str]:
    return ["--dst", str(dst), "--model", model, "--shard-size", "2", "--num-workers", "1",
            "--no-progress"]


def runtime_env_file(tmp_path: Path, src: Path) -> Path:
    """The job spec reads SEGPIPE_SRC from the job's runtime environment, as in the CronJob."""
    path = tmp_path / "runtime-env.yaml"
    path.write_text(yaml.safe_dump({"env_vars": {"SEGPIPE_SRC": str(src)}}))
    return path


def test_ray_job_submit_runs_a_job_spec(ray_head, tmp_path, tiny_model):
    address, env = ray_head
    write_images(tmp_path / "images", 4)
    dst = tmp_path / "out"
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--submission-id", "segpipe-demo-1",
         "--runtime-env", str(runtime_env_file(tmp_path, tmp_path / "images")), "--",
         *segpipe_command(), "run", DEMO_SPEC, *overrides(dst, tiny_model)],
        env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "demo step 1/1 annotate: run 00001: 4 images" in result.stdout
    assert len(json.loads((dst / "panoptic.json").read_text())["images"]) == 4


def cronjob_script(entrypoint: list[str], runtime_env: Path) -> str:
    """The CronJob's submit script, aimed at this checkout's spec and runtime env file."""
    (cronjob,) = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d["kind"] == "CronJob"]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    assert "segpipe run /opt/segpipe/jobs/enrich.yaml" in script
    return (script.replace("segpipe run /opt/segpipe/jobs/enrich.yaml", shlex.join(entrypoint))
            .replace("/etc/segpipe/runtime-env.yaml", str(runtime_env)))


def test_cronjob_submitter_follows_its_job_and_never_submits_twice(ray_head, tmp_path, tiny_model):
    address, env = ray_head
    write_images(tmp_path / "images", 3, seed=1)
    runtime_env = runtime_env_file(tmp_path, tmp_path / "images")
    entrypoint = [*segpipe_command(), "run", DEMO_SPEC, *overrides(tmp_path / "out", tiny_model)]
    script = cronjob_script(entrypoint, runtime_env)
    pod_env = {**env, "RAY_ADDRESS": address, "SUBMISSION_ID": "segpipe-enrich-29000000"}

    def run_pod(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/bash", "-c", script], env=environment, capture_output=True,
                              text=True, timeout=JOB_TIMEOUT_S)

    first = run_pod(pod_env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "submitted segpipe-enrich-29000000" in first.stdout
    assert "demo step 1/1 annotate: run 00001: 3 images" in first.stdout

    retried = run_pod(pod_env)  # a retried pod of the same Kubernetes Job re-attaches
    assert retried.returncode == 0, retried.stdout[-4000:] + retried.stderr[-4000:]
    assert "submitted" not in retried.stdout
    assert "SUCCEEDED" in retried.stdout
    listed = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.stdout.count("submission_id='segpipe-enrich-29000000'") == 1, listed.stdout

    # A failed Ray job ends the pod with exit code 3, which the podFailurePolicy never retries.
    (tmp_path / "empty").mkdir()
    failing = cronjob_script(
        [*segpipe_command(), "run", DEMO_SPEC, "--src", str(tmp_path / "empty"),
         *overrides(tmp_path / "out-empty", tiny_model)], runtime_env)
    failed = subprocess.run(["/bin/bash", "-c", failing],
                            env={**pod_env, "SUBMISSION_ID": "segpipe-enrich-29001440"},
                            capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert failed.returncode == 3, failed.stdout[-4000:] + failed.stderr[-4000:]
    assert "FAILED" in failed.stdout
