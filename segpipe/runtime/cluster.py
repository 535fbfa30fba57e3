"""The Ray cluster as the job sees it: joining or starting one, the environment workers
get from the driver, and how many workers its resources fit."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import psutil
import ray

log = logging.getLogger(__name__)

# Env vars workers get from the driver, by name: storage endpoints, regions, profile names,
# retry settings, model caches. An allow-list, since a runtime env is written to Ray's logs
# and shown on its dashboard, and a new variable may hold a secret (FSSPEC_S3_SECRET, a
# container's token). A local Ray's workers inherit the driver's environment anyway; a remote
# cluster's workers use their own credentials (an instance role, a mounted secret).
FORWARDED_ENV = frozenset({
    "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_EC2_METADATA_DISABLED",
    "FSSPEC_CONFIG_DIR", "FSSPEC_S3_ENDPOINT_URL",
    "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE",
    "TRANSFORMERS_CACHE", "SEGPIPE_CACHE",
})
FORWARDED_ENV_PREFIXES = ("AWS_ENDPOINT_URL_",)  # per-service endpoints: AWS_ENDPOINT_URL_S3

def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `environ` that workers get: those the allow-list names, no others."""
    return {k: v for k, v in environ.items()
            if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}


def init_ray(address: str | None, *, dashboard: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray, with its dashboard only if
    asked (a process of its own that slows the start); workers get our storage env."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        _start_local(dashboard)
        return
    env = forwarded_env(os.environ)
    # Inside a Ray job the job's own runtime env already reaches every worker, and Ray refuses
    # a driver runtime env that sets one of its variables again.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_env = (job.get("runtime_env") or {}).get("env_vars") or {}
    env = {k: v for k, v in env.items() if k not in job_env}
    if "OMP_WAIT_POLICY" not in os.environ and "OMP_WAIT_POLICY" not in job_env:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    # Ray refuses dashboard settings when joining a cluster: that cluster has its own.
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True,
             logging_level=logging.WARNING)


# OpenMP threads that spin while idle starve the reading and writing threads that run beside
# torch on a CPU worker (several times slower on few cores); GPU work is unaffected.
OMP_WAIT_POLICY = "PASSIVE"


# How Ray's processes retry connecting to a local socket. The raylet connects to its own
# object store as that starts on another thread, and when the store is not listening yet,
# Ray's default waits a whole second before trying again: a third to a half of the local
# starts measured here took 1 s longer (3.2-3.4 s against 2.2-2.4 s). Retrying every 50 ms
# keeps Ray's budget (10 tries of 1 s) and costs at most 50 ms.
SOCKET_CONNECT_RETRY = {"RAY_raylet_client_connect_timeout_milliseconds": "50",
                        "RAY_raylet_client_num_connect_attempts": "200"}


def _start_local(dashboard: bool) -> None:
    """A local Ray's processes are this process's children and inherit its environment, so
    the workers get it with no runtime env. A runtime env would also cost the start: the
    workers Ray starts ahead with the cluster have none, so the first actor would wait for a
    worker process of its own (about a second) instead of taking one that is already up."""
    global _started_local
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    start_local_ray(log_to_driver=True, logging_level=logging.WARNING,
                    include_dashboard=dashboard)
    _started_local = True
    atexit.register(stop_monitor)  # runs before Ray's own exit hook, registered at its import


# Ray gives its raylet a fixed 30 s to register, a limit no setting changes. On a machine
# whose cores are busy with other work the raylet can still be starting when it runs out,
# and a second try usually finds it faster (its binaries are in the page cache by then).
LOCAL_START_ATTEMPTS = 3
START_TIMED_OUT = "timed out during startup"  # in the message of the exception Ray raises


def start_local_ray(**init_kwargs: Any) -> None:
    """`ray.init(**init_kwargs)` for a new local cluster, tried again when Ray's start timed
    out, after stopping the processes the failed start left running: Ray keeps no handle on
    them, and a GCS and raylet left behind would take the cores the next start needs. Its
    processes get the socket retry above, unless the caller set one of its variables."""
    if not any(k in os.environ for k in SOCKET_CONNECT_RETRY):
        os.environ.update(SOCKET_CONNECT_RETRY)
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        before = {child.pid for child in psutil.Process().children()}
        try:
            ray.init(**init_kwargs)
            return
        except Exception as exc:
            if START_TIMED_OUT not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            _stop_children(exclude=before)
            ray.shutdown()
            log.warning("the local Ray's start timed out (attempt %d of %d); starting it again",
                        attempt, LOCAL_START_ATTEMPTS)


def _stop_children(*, exclude: set[int]) -> None:
    """Kill this process's children not in `exclude`, and all their descendants."""
    doomed: list[psutil.Process] = []
    for child in psutil.Process().children():
        if child.pid not in exclude:
            with contextlib.suppress(psutil.Error):
                doomed.extend([child, *child.children(recursive=True)])
    for proc in doomed:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(doomed, timeout=10)


_started_local = False  # whether this process started the local Ray it is connected to


def stop_local() -> None:
    """Stop the local Ray this process started, if it did (a cluster it joined is left as it
    is). Ray's own exit hook would do it too, but first sleeps half a second so that the
    workers' last log lines can still print; a command that has written its results has
    nothing left to wait for, and every command's exit would pay that half second."""
    global _started_local
    if _started_local and ray.is_initialized():
        stop_monitor()
        ray.shutdown()
    _started_local = False


def stop_monitor() -> None:
    """Stop a local Ray's autoscaler monitor, which a one-node cluster does not need. Ray's
    shutdown stops the GCS first; the monitor, asked to stop after it, tries to report to
    the stopped GCS and is killed a second later, a second of every command's exit."""
    node = getattr(ray._private.worker, "_global_node", None)  # no public handle on it
    if node is not None and hasattr(node, "kill_monitor"):
        node.kill_monitor(check_alive=False)


def cluster_resources() -> tuple[float, float]:
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def cpu_threads_per_worker(num_workers: int, gpus_per_worker: float = 1.0) -> int | None:
    """On a cluster without GPUs (or with workers that take none), each worker's torch gets
    its share of the CPUs (Ray would otherwise pin it to the one CPU it declares) less one
    core, which the worker's reading, post-processing and writing threads need beside the
    forward; with GPUs, torch's default is right."""
    cpus, gpus = cluster_resources()
    return None if gpus > 0 and gpus_per_worker > 0 else max(1, int(cpus // num_workers) - 1)


def default_num_workers(gpus_per_worker: float) -> int:
    return workers_for(*cluster_resources(), gpus_per_worker=gpus_per_worker)


def workers_for(cpus: float, gpus: float, *, gpus_per_worker: float) -> int:
    """One worker per `gpus_per_worker` GPUs; workers that take no GPU run on the CPU."""
    if gpus > 0 and gpus_per_worker > 0:
        return max(1, int(gpus // gpus_per_worker))
    # On CPU each worker runs torch on several threads; a few fat workers beat many thin ones.
    return max(1, int(cpus // 8))
