"""Storage faults: a job through a proxy that fails, throttles, drops and cuts S3 requests
ends with the same outputs as a job without faults; an unreachable endpoint fails fast."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Callable

import boto3
import pytest

from segpipe.app.annotate import annotate
from segpipe.cli import main
from segpipe.core.config import JobConfig
from segpipe.io.storage import Folder, is_transient, storage_options_for
from tests.support.faultproxy import FAULTS, FaultProxy
from tests.support.images import write_images
from tests.support.outputs import read_table

BUCKET = "storage-faults"
NUM_IMAGES = 8
# Seeds whose first 40 draws hold every kind of fault (the draws, not the requests they
# land on, are fixed by the seed), so each test meets them all.
# One attempt per request, so that a test sees the error the proxy made, unretried.
NO_RETRIES = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}


@pytest.fixture(scope="module")
def source(s3_endpoint, tmp_path_factory) -> str:
    """Images in a bucket of this module's own."""
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=BUCKET)
    src = Folder(f"s3://{BUCKET}/raw")
    for path in write_images(tmp_path_factory.mktemp("faults-src"), NUM_IMAGES, seed=9, ext="jpg"):
        src.write_bytes(path.name, path.read_bytes())
    return src.url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_of(call: Callable[[], object]) -> BaseException:
    """The exception `call` raises, whatever its class (the client's, not ours)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned for the test to examine
        return exc
    raise AssertionError("expected an error")


def test_retries_follow_the_aws_environment_when_it_sets_them(monkeypatch):
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    config = storage_options_for("s3://bucket/x")["config_kwargs"]
    assert config["retries"]["mode"] == "standard" and config["connect_timeout"] > 0
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert "retries" not in storage_options_for("s3://bucket/x")["config_kwargs"]
    assert "config_kwargs" not in storage_options_for("/local/folder")


def test_the_proxy_forwards_requests_and_responses_unchanged(s3_endpoint, source):
    with FaultProxy(s3_endpoint, rate=0.0) as proxy:
        root = f"s3://{BUCKET}"
        direct, proxied = Folder(root), Folder(root, {"endpoint_url": proxy.url})
        proxied.write_bytes("proxied/blob.bin", bytes(range(256)) * 40)
        assert direct.read_bytes("proxied/blob.bin") == bytes(range(256)) * 40
        assert proxied.list("raw") == direct.list("raw") and len(direct.list("raw")) == NUM_IMAGES
        assert proxied.read_bytes("raw/img-000.jpg") == direct.read_bytes("raw/img-000.jpg")
        proxied.delete("proxied/blob.bin")
        assert not direct.exists("proxied/blob.bin")
    assert proxy.forwarded >= 6 and not proxy.injected


@pytest.mark.parametrize("fault", ["500", "503", "drop", "truncate"])
def test_each_fault_is_an_error_worth_retrying(s3_endpoint, source, fault):
    with FaultProxy(s3_endpoint, rate=1.0, faults=(fault,)) as proxy:
        folder = Folder(source, {"endpoint_url": proxy.url, **NO_RETRIES})
        error = error_of(lambda: folder.fs.cat_file(folder.path("img-001.jpg")))
    assert is_transient(error), repr(error)
    assert proxy.injected[fault] >= 1


def test_errors_not_worth_retrying(s3_endpoint, source):
    folder = Folder(source, NO_RETRIES)
    with pytest.raises(FileNotFoundError) as missing:
        folder.fs.cat_file(folder.path("no-such-image.jpg"))
    assert not is_transient(missing.value)
    unreachable = Folder(source, {"endpoint_url": f"http://127.0.0.1:{closed_port()}",
                                  **NO_RETRIES})
    refused = error_of(lambda: unreachable.fs.cat_file(unreachable.path("img-001.jpg")))
    assert "Could not connect to the endpoint URL" in str(refused)
    assert not is_transient(refused)


def test_reads_and_writes_survive_faults_byte_for_byte(s3_endpoint, source):
    """Every fault, often: the retry layers (botocore's, then segpipe's) hide them all,
    and no cut-short body is ever taken for the whole object."""
    blobs = {f"blobs/{i:02d}.bin": bytes([i]) * (5000 + 997 * i) for i in range(12)}
    with FaultProxy(s3_endpoint, rate=0.3, seed=5, delay_s=0.05) as proxy:
        folder = Folder(f"s3://{BUCKET}/roundtrip", {"endpoint_url": proxy.url})
        for key, data in blobs.items():
            folder.write_bytes(key, data)
        assert folder.list("blobs") == sorted(blobs)
        for key, data in blobs.items():
            assert folder.exists(key)
            assert folder.read_bytes(key) == data
    assert set(proxy.injected) == set(FAULTS), proxy.injected


def _rows(dst: Folder, table: str) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "created_at"} for r in read_table(dst, table)]
    return sorted(rows, key=lambda r: (r["image_id"], r.get("segment_id", 0)))


def test_a_job_through_faults_equals_one_without(ray_cluster, tiny_model, s3_endpoint, source):
    base = JobConfig(src=source, dst=f"s3://{BUCKET}/clean", model=tiny_model, batch_size=2,
                     shard_size=2, num_workers=1, progress=False)
    clean = annotate(base)
    with FaultProxy(s3_endpoint, rate=0.25, seed=5, delay_s=0.2) as proxy:
        faulty = annotate(base.replace(dst=f"s3://{BUCKET}/faulty",
                                       storage_options={"endpoint_url": proxy.url}))
    # Driver and workers both went through the proxy, and met every kind of fault.
    assert proxy.forwarded > 60 and set(proxy.injected) == set(FAULTS), proxy.injected
    for summary in (clean, faulty):
        assert summary["status"] == "complete" and summary["errors"] == 0
        assert summary["images"] == NUM_IMAGES
    a, b = Folder(base.dst), Folder(f"s3://{BUCKET}/faulty")
    assert a.read_bytes("panoptic.json") == b.read_bytes("panoptic.json")
    pngs = a.list("panoptic")
    assert len(pngs) == NUM_IMAGES and b.list("panoptic") == pngs
    for key in pngs:
        assert a.read_bytes(key) == b.read_bytes(key), key
    for table in ("segments", "images", "errors"):
        assert _rows(a, table) == _rows(b, table), table
    assert len(_rows(b, "segments")) > 0


def test_an_unreachable_endpoint_fails_fast_and_names_itself():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    stderr = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(stderr):
        rc = main(["annotate", f"s3://{BUCKET}/raw/", f"s3://{BUCKET}/out",
                   "--storage-options", f'{{"endpoint_url": "{endpoint}"}}', "--no-progress"])
    elapsed = time.monotonic() - started
    assert rc == 1
    assert "Could not connect to the endpoint URL" in stderr.getvalue()
    assert endpoint in stderr.getvalue()
    assert elapsed < 30, f"took {elapsed:.0f} s to give up on {endpoint}"
