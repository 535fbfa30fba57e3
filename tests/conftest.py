"""Shared real parts: one local Ray per test session, a moto S3 server on 127.0.0.1,
and a tiny random-initialized Mask2Former checkpoint."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from tests.support.checkpoints import save_tiny_mask2former

# Credentials for the local S3 endpoint only; set before Ray starts so workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker process runs its own local Ray (and moto): give each its own
# Ray temp folder, so their session folders and sockets never meet.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RAY_TMPDIR"] = os.path.join(
        os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), f"ray-{os.environ['PYTEST_XDIST_WORKER']}")
    os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real HTTP S3 endpoint; AWS_ENDPOINT_URL points every client (and Ray worker) at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str) -> Iterator[None]:
    """One local Ray for the whole session, started after the S3 env is in place."""
    import ray

    from segpipe.runtime.cluster import start_local_ray

    # Tried again if it times out, as a command's own start is: several test processes start
    # clusters at once on few cores.
    start_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR",
                    log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test."""
    import boto3

    name = "t-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:50].strip("-")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path):  # noqa: ANN201 - a URL maker
    """A function giving the URL of a fresh folder named `name`, on local files or on S3:
    each test that takes it runs on both. (A module may define its own `where`.)"""
    if request.param == "local":
        return lambda name: str(tmp_path / name)
    bucket = request.getfixturevalue("bucket")
    return lambda name: f"s3://{bucket}/{name}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_mask2former(tmp_path_factory.mktemp("models") / "tiny-mask2former"))
