"""A local Ray as `init_ray` starts it: its workers get the driver's environment without a
runtime env, so the first actor can take a worker Ray started ahead with the cluster; the
exit hook stops the autoscaler monitor, which a one-node cluster does not use; a command
stops the local Ray it started when it is done, not at the interpreter's exit.

The test session already holds a Ray, so the start runs in a process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from segpipe.runtime.cluster import SOCKET_CONNECT_RETRY
from tests.support.images import write_images

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import atexit, json, os, psutil, ray
from segpipe.runtime.cluster import SOCKET_CONNECT_RETRY, init_ray

def at_exit():
    # Registered before init_ray, so it runs after segpipe's exit hook and before Ray's own.
    print(json.dumps({"monitor_at_exit": monitor.poll() is None,
                      "ray_up_at_exit": ray.is_initialized(),
                      "runs_at_exit": ray.get(probe.seen.remote()) == seen}))

atexit.register(at_exit)
init_ray(None)

@ray.remote(num_cpus=1)
class Probe:
    def seen(self):
        return {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "AWS_ENDPOINT_URL")}

probe = Probe.remote()
seen = ray.get(probe.seen.remote())
processes = ray._private.worker._global_node.all_processes
monitor = processes["monitor"][0].process
raylet_env = psutil.Process(processes["raylet"][0].process.pid).environ()
print(json.dumps({"runtime_env": dict(ray.get_runtime_context().runtime_env), "seen": seen,
                  "monitor_running": monitor.poll() is None,
                  "raylet_retry": {k: raylet_env.get(k) for k in SOCKET_CONNECT_RETRY}}))
"""


def test_a_local_start_passes_the_environment_without_a_runtime_env():
    ray_tmp = tempfile.mkdtemp(prefix="seglocal-")  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(RAY_ADDRESS="", RAY_TMPDIR=ray_tmp, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    # Ray may print lines of its own to stdout; the script's are the JSON ones.
    got, at_exit = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    # A runtime env keeps the first actor off the workers Ray started ahead (they have none).
    assert got["runtime_env"] == {}
    assert got["seen"] == {"OMP_WAIT_POLICY": "PASSIVE", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    # At exit the autoscaler monitor is stopped before Ray's shutdown; Ray works without it.
    assert got["monitor_running"]
    # Its raylet retries its object store's socket every 50 ms, not every second.
    assert got["raylet_retry"] == SOCKET_CONNECT_RETRY
    assert at_exit == {"monitor_at_exit": False, "ray_up_at_exit": True, "runs_at_exit": True}


COMMAND = """
import atexit, json, os, sys, psutil, ray
from segpipe.cli import main

def at_exit():
    # Registered before the command starts Ray, so it runs before Ray's own exit hook.
    print(json.dumps({"ray_up_at_exit": ray.is_initialized()}))

atexit.register(at_exit)
rc = main(["annotate", *sys.argv[1:], "--num-workers", "1", "--no-progress"])
children = [p for p in psutil.Process().children() if p.status() != psutil.STATUS_ZOMBIE]
print(json.dumps({"rc": rc, "ray_up": ray.is_initialized(), "children": len(children)}))
"""


def test_a_command_stops_the_local_ray_it_started_when_it_is_done(tmp_path, tiny_model):
    # Left to Ray's exit hook, the stop would first sleep half a second, on every command.
    write_images(tmp_path / "src", 2, seed=3)
    ray_tmp = tempfile.mkdtemp(prefix="seglocal-")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    done = subprocess.run([sys.executable, "-c", COMMAND, str(tmp_path / "src"),
                           str(tmp_path / "dst"), "--model", tiny_model], env=env, cwd=ROOT,
                          text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got, at_exit = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    # Its processes (GCS, raylet, agents) are gone when the command returns.
    assert got == {"rc": 0, "ray_up": False, "children": 0}
    assert at_exit == {"ray_up_at_exit": False}
    assert (tmp_path / "dst" / "panoptic.json").exists()


FLAKY_START = """
import json, time, types, psutil, ray
import ray._private.node as node_module
import ray._private.services as services
from segpipe.runtime.cluster import init_ray

# Ray's start, made to time out once: the first check for the raylet's registration fails,
# and Ray's clock then reads a minute later, past the 30 s Ray waits.
real_get_node, jump = services.get_node, [0.0]

def get_node(*args, **kwargs):
    if not jump[0]:
        jump[0] = 60.0
        raise RuntimeError("injected: the raylet has not registered yet")
    return real_get_node(*args, **kwargs)

services.get_node = get_node
clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
node_module.time = types.SimpleNamespace(**{**clock, "monotonic": lambda: time.monotonic() + jump[0]})
init_ray(None)
names = [p.name() for p in psutil.Process().children(recursive=True)]
print(json.dumps({"task": ray.get(ray.remote(lambda: 7).remote()),
                  "gcs_servers": sum("gcs_server" in n for n in names),
                  "raylets": sum("raylet" in n for n in names)}))
"""


def test_a_local_start_that_timed_out_is_tried_again_without_the_first_tries_processes():
    ray_tmp = tempfile.mkdtemp(prefix="seglocal-")
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": ray_tmp}
    done = subprocess.run([sys.executable, "-c", FLAKY_START], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "start timed out (attempt 1 of 3); starting it again" in done.stderr
    got = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    # The first start's GCS and raylet were stopped: one of each is left, and it works.
    assert got == [{"task": 7, "gcs_servers": 1, "raylets": 1}]
