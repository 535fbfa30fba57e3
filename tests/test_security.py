"""Security: hostile source names can't place outputs outside DST, the URIs of a manifest
reach only what they may, credentials and signed URLs never reach logs or outputs, and a
checkpoint's remote code never runs."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from PIL import Image

from segpipe.app.annotate import annotate
from segpipe.cli import build_parser, config_from_args
from segpipe.core.config import JobConfig
from segpipe.core.identity import image_png_key
from segpipe.core.items import ImageFailure
from segpipe.destination import layout
from segpipe.io.storage import Folder, UnsafeKeyError, check_key, filesystem
from segpipe.model.loading import ModelLoadError, load_model
from segpipe.sources import open_source
from segpipe.sources.policy import RefusedUri, UriPolicy, is_public
from segpipe.sources.uris import read_capped
from tests.support.checkpoints import save_tiny_mask2former
from tests.support.httpserver import http_server
from tests.support.outputs import read_table

TOKEN = "zzescape"  # in every hostile name, so that a file named after one can be found
ROOT = Path(__file__).resolve().parent.parent

# What a destination may hold: every key is made of run, shard and image ids.
OUTPUT_KEY = re.compile(
    r"panoptic\.json"
    r"|panoptic/\d{5}/[0-9a-f]{16}\.png"
    r"|tables/(segments|images|errors)/run=\d{5}/\d{5}-\d{6}\.parquet"
    r"|_segpipe/job\.json"
    r"|_segpipe/runs/\d{5}/(run|plan|summary)\.json"
    r"|_segpipe/runs/\d{5}/(plan|fragments|commits|failed)/\d{5}-\d{6}\.json"
)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24 + seed, 20), (seed * 20 % 255, 80, 160)).save(buf, format="PNG")
    return buf.getvalue()


# --- keys ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "panoptic.json", "panoptic/00001/00000000000000ff.png",
    "tables/images/run=00001/00001-000000.parquet",
    "_segpipe/runs/00001/commits/00001-000000.json", "a.b-c_d+e=f", "...",
])
def test_plain_relative_keys_pass(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", [
    "", "/etc/passwd", "//host/share", "../x", "a/../../x", "a/..", "..", ".", "a/./b", "a//b",
    "a/", "a\\..\\..\\b", "..\\x", "C:\\Windows\\x", "C:/x", "a%2F..%2Fb", "%2e%2e/x",
    "a\u202eb.png", "a\uff0f..\uff0fb", "\uff0e\uff0e/x", "a\x00b", "a\nb", "a b", "~/x", "$HOME/x",
    "a/b?c", "a#b", "s3://bucket/x", "file:///etc/passwd",
])
def test_unsafe_keys_are_refused_not_repaired(key, tmp_path):
    with pytest.raises(UnsafeKeyError, match="not a plain relative key"):
        check_key(key)
    dst = Folder(str(tmp_path / "dst"))
    with pytest.raises(UnsafeKeyError):
        dst.write_bytes(key, b"x")
    assert not any(tmp_path.rglob("*")), "a refused key wrote something"


def test_output_keys_come_from_ids_only():
    for image in (1, 2**32 + 7, 2**63 - 1):
        for key in (layout.panoptic_png("00001", image), layout.semantic_png("99999", image)):
            assert check_key(key) == key
            assert key.endswith(f"/{image_png_key(image)}")
    assert OUTPUT_KEY.fullmatch(layout.commit("00001", "00001-000000"))


# --- hostile source names ------------------------------------------------------------------------

def names_with_token(*roots: Path, max_depth: int | None = None) -> set[str]:
    """Paths under `roots` whose name holds TOKEN (skipping virtualenvs and git data)."""
    found = set()
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).parts) - base_depth
            dirs[:] = [d for d in dirs if d not in (".venv", ".git", "proc", "sys", "dev")
                       and (max_depth is None or depth < max_depth)]
            found.update(os.path.join(folder, n) for n in dirs + files if TOKEN in n)
    return found


def everywhere_outputs_could_land(tmp_root: Path) -> set[str]:
    """Names with TOKEN where a path built from a source name would put a file: the test's
    folders, the working folder, the filesystem root, the temp and home folders."""
    shallow = [Path("/"), Path(tempfile.gettempdir()), Path.home()]
    return (names_with_token(tmp_root, ROOT, Path.cwd())
            | names_with_token(*shallow, max_depth=1))


def all_objects(endpoint: str) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = set()
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            keys.update(f"{bucket['Name']}/{o['Key']}" for o in page.get("Contents", []))
    return keys


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


HOSTILE_NAMES = [
    f"{TOKEN}-a\\..\\..\\back.png",  # backslashes, as Windows paths
    f"{TOKEN}-%2F..%2F..%2Fenc.png",  # percent-encoded separators
    f"\u202e{TOKEN}-rtl-gnp.png",  # right-to-left override
    f"{TOKEN}\uff0f..\uff0ffull-width.png",  # full-width solidus
    f"{TOKEN}-C:\\Windows\\drive.png",
    f"-{TOKEN}-dash ~ $HOME *?[x].png",  # shell and glob characters
]
LOCAL_ONLY = [f"{TOKEN}-new\nline.png"]  # the S3 test server refuses this key
HIDDEN_ON_S3 = [f"../../{TOKEN}-dotdot.png", f"./{TOKEN}-dot.png"]  # '.' parts: hidden, skipped


def test_hostile_file_names_only_ever_write_under_dst(ray_cluster, tiny_model, s3_endpoint,
                                                      tmp_path):
    """Hostile keys in a bucket and hostile names in a folder, one job (a `::` list) writing
    to S3: every new object is under DST at an id-derived key, and nothing named after a
    source file appears anywhere."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="sec-names")
    for i, name in enumerate([*HOSTILE_NAMES, f"/{TOKEN}-abs.png", *HIDDEN_ON_S3]):
        s3.put_object(Bucket="sec-names", Key=f"raw/{name}", Body=png(i))
    local = tmp_path / "src"
    local.mkdir()
    for i, name in enumerate([*HOSTILE_NAMES, *LOCAL_ONLY]):
        (local / name).write_bytes(png(i))
    before_objects, before_names = all_objects(s3_endpoint), everywhere_outputs_could_land(tmp_path)
    dst = "s3://sec-names/out/run"

    summary = annotate(JobConfig(src=f"s3://sec-names/raw/::{local}/", dst=dst, model=tiny_model,
                                 batch_size=4, shard_size=8, num_workers=1, progress=False))

    s3_uris = {f"s3://sec-names/raw/{n}" for n in [*HOSTILE_NAMES, f"/{TOKEN}-abs.png"]}
    expected = s3_uris | {str(local / n) for n in [*HOSTILE_NAMES, *LOCAL_ONLY]}
    rows = read_table(Folder(dst), "images")
    assert {r["image_uri"] for r in rows} == expected
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert summary["annotated"] == len(expected)
    new_objects = all_objects(s3_endpoint) - before_objects
    assert new_objects and all(k.startswith("sec-names/out/run/") for k in new_objects), sorted(
        new_objects)
    for key in new_objects:
        assert OUTPUT_KEY.fullmatch(key.removeprefix("sec-names/out/run/")), key
    assert everywhere_outputs_could_land(tmp_path) == before_names


def test_hostile_tar_member_names_only_ever_write_under_dst(ray_cluster, tiny_model, tmp_path):
    """Tar members named to climb out of a folder, were anyone to extract them: segpipe
    reads them in place and names its outputs by id."""
    # (By WebDataset's rule a member's extension starts at the first dot of its base name,
    # so "a\\..\\b.png" is no image member; backslashes and encodings come without dots.)
    members = [f"../../{TOKEN}-up.png", f"/{TOKEN}-abs/x.png", f"a/../../{TOKEN}-mid.png",
               f"C:\\{TOKEN}\\back.png", f"./{TOKEN}-dot.png", f"{TOKEN}%2Fenc%2Fsep.png"]
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "shard.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i, name in enumerate(members):
            info = tarfile.TarInfo(name)
            data = png(i)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dst = tmp_path / "dst"
    before_files, before_names = files_under(tmp_path), everywhere_outputs_could_land(tmp_path)

    summary = annotate(JobConfig(src=str(src), dst=str(dst), model=tiny_model, batch_size=3,
                                 shard_size=6, num_workers=1, progress=False))

    rows = read_table(Folder(str(dst)), "images")
    assert sorted(r["member"] for r in rows) == sorted(members)
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert summary["annotated"] == len(members)
    new_files = files_under(tmp_path) - before_files
    assert new_files and all(f.startswith(f"{dst}/") for f in new_files), sorted(new_files)
    for path in new_files:
        assert OUTPUT_KEY.fullmatch(path.removeprefix(f"{dst}/")), path
    assert everywhere_outputs_could_land(tmp_path) == before_names


# --- credentials and signed URLs -----------------------------------------------------------------

def _text_of(name: str, data: bytes) -> str:
    """All the text an output file holds: Parquet decompressed to its values."""
    if name.endswith(".parquet"):
        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    return data.decode("utf-8", errors="replace")


def _texts_under(root: Path) -> Iterator[tuple[str, str]]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_socket():
            try:
                yield str(path), path.read_bytes().decode("utf-8", errors="replace")
            except OSError:  # a file that went away while Ray shut down
                continue


def test_credentials_and_signatures_never_reach_logs_or_outputs(tiny_model, s3_endpoint, tmp_path):
    """A job in its own process and its own Ray, with recognizable credentials (in the AWS
    variables, in fsspec's config variables, a container credentials token) and a manifest
    of signed URLs (some of them failing): its output, every Ray log and every file it wrote
    are searched for the secrets, the key id and the signatures."""
    key_id = "AKIA" + secrets.token_hex(8).upper()
    secret = "sEcReT" + secrets.token_hex(16)
    fsspec_secret = "fSsPeCsEcReT" + secrets.token_hex(16)  # what s3fs signs with, here
    container_token = "cOnTaInErToKeN" + secrets.token_hex(16)
    bucket = "sec-creds"
    session = {"aws_access_key_id": key_id, "aws_secret_access_key": secret,
               "region_name": "us-east-1", "endpoint_url": s3_endpoint}
    s3 = boto3.client("s3", **session)
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"raw/img-{i}.png", Body=png(i))
    s3.put_object(Bucket=bucket, Key=f"raw/../../{TOKEN}-dotdot.png", Body=png(4))
    v4 = boto3.client("s3", config=Config(signature_version="s3v4"), **session)

    def signed(client: object, key: str) -> str:
        return client.generate_presigned_url(  # type: ignore[attr-defined]
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)

    fake_query = (f"X-Amz-Credential={key_id}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
                  f"&X-Amz-Signature={secrets.token_hex(32)}")
    uris = [signed(v4, "raw/img-0.png"), signed(s3, "raw/img-1.png"),  # sigv4 and v2 style
            signed(v4, "raw/missing.png"), signed(s3, "raw/missing-too.png"),
            f"s3://{bucket}/raw/img-2.png",
            f"s3://{bucket}/raw/../../{TOKEN}-dotdot.png",  # an exact key, read as such
            f"s3://{bucket}/raw/missing.png?{fake_query}",
            f"{tmp_path}/nowhere.png?{fake_query}",
            f"http://127.0.0.1:9/unreachable.png?{fake_query}"]
    s3.put_object(Bucket=bucket, Key="lists/signed.txt", Body="\n".join(uris).encode())
    signatures = set(re.findall(r"(?:Signature|X-Amz-Signature|X-Amz-Credential)=([^&]+)",
                                "\n".join(uris)))
    assert len(signatures) >= 6
    # Each as written in a URL and as a message might show it, percent-decoded.
    needles = {f"{what} ({form})": text
               for what, value in [("the secret", secret), ("the access key id", key_id),
                                   ("FSSPEC_S3_SECRET", fsspec_secret),
                                   ("AWS_CONTAINER_AUTHORIZATION_TOKEN", container_token),
                                   *((f"signature {s[:6]}...", s) for s in signatures)]
               for form, text in (("as is", value), ("decoded", unquote(value)))}

    ray_tmp = Path(tempfile.mkdtemp(prefix="segsec-"))  # short: Ray's socket paths must fit
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
           "FSSPEC_S3_KEY": key_id, "FSSPEC_S3_SECRET": fsspec_secret,
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": container_token,
           "RAY_ADDRESS": "", "RAY_TMPDIR": str(ray_tmp)}
    dst = f"s3://{bucket}/out"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "segpipe.cli", "annotate", f"s3://{bucket}/lists/signed.txt",
             dst, "--model", tiny_model, "--num-workers", "1", "--no-progress",
             # The test endpoint signs http://127.0.0.1 URLs, and some URIs are local files.
             "--allow-uri-schemes", "http,file", "--allow-private-hosts"],
            env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
        logs = dict(_texts_under(ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]

    out, root = Folder(dst), Folder(f"s3://{bucket}")
    objects = {key: _text_of(key, root.read_bytes(key)) for key in root.list("out")}
    errors = read_table(out, "errors")
    # Failures were recorded (so messages that once held the URLs were written) ...
    assert len(errors) == 5 and len(read_table(out, "images")) == len(uris)
    assert all("<redacted>" in e["image_uri"] + e["message"] for e in errors
               if "?" in e["image_uri"])
    # ... and the job's output, Ray's logs and DST hold no credential.
    assert len(logs) > 3 and "worker" in " ".join(logs)
    places = {"the job's output": output, **logs, **objects}
    # The plan is among them: it keeps signed URIs redacted, with where the manifest lists them.
    plan = re.compile(r"out/_segpipe/runs/\d{5}/plan/\d{5}-\d{6}\.json")
    assert any(plan.fullmatch(where) and "Signature=<redacted>" in text
               for where, text in objects.items())
    leaks = sorted(f"{what} in {where}" for where, text in places.items()
                   for what, needle in needles.items() if needle in text)
    assert not leaks


# --- what the URIs of a list may reach ----------------------------------------------------------

def listed_uris(kind: str, url: str, uris: list[str]) -> str:
    """A manifest or a URI table of `uris` at `url` (without its suffix); returns its URL."""
    if kind == "manifest":
        data, suffix = "\n".join(uris).encode(), ".txt"
    else:
        buf = io.BytesIO()
        pq.write_table(pa.table({"uri": uris}), buf)
        data, suffix = buf.getvalue(), ".parquet"
    fs, path = filesystem(url + suffix)
    if "://" not in url:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    return url + suffix


def fetch_all(source) -> dict[str, bytes | ImageFailure]:
    refs = list(source.list_images())
    return {ref.uri: value for ref, value in source.fetch(refs, threads=2)}


@pytest.mark.parametrize("kind", ["manifest", "parquet"])
def test_a_remote_list_reaches_object_stores_only_by_default(kind, bucket, tmp_path):
    """A list on S3 naming loopback web servers (by address and by a name resolving to one)
    and a local file: each is refused, with the flag that would allow it; S3 is read."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(7))
    Folder(f"s3://{bucket}").write_bytes("imgs/a.png", png(1))
    with http_server({"/meta-data.png": png(2)}) as served:
        port = served.url.rsplit(":", 1)[1]
        uris = [f"s3://{bucket}/imgs/a.png", f"{served.url}/meta-data.png",
                f"https://127.0.0.1:{port}/meta-data.png",
                f"https://localhost:{port}/meta-data.png", f"file://{secret}"]
        url = listed_uris(kind, f"s3://{bucket}/lists/untrusted", uris)

        refused = fetch_all(open_source(url, source_format="manifest"))
        allowed = fetch_all(open_source(url, source_format="manifest", allow_private_hosts=True,
                                        allow_uri_schemes=("http", "file")))

    assert served.requests == ["GET /meta-data.png"]  # only once allowed
    assert refused[uris[0]] == png(1)
    failures = {uri: refused[uri] for uri in [*uris[1:4], str(secret)]}  # file:// as a path
    assert all(isinstance(f, ImageFailure) and f.stage == "read"
               and f.message.startswith(f"{uri}: not read: ")
               for uri, f in failures.items()), failures
    assert "--allow-uri-schemes http" in failures[uris[1]].message
    assert "127.0.0.1" in failures[uris[2]].message
    assert "--allow-private-hosts" in failures[uris[2]].message
    assert "localhost resolves to 127.0.0.1" in failures[uris[3]].message  # checked when read
    assert "--allow-private-hosts" in failures[uris[3]].message
    assert "local files" in failures[str(secret)].message
    assert "--allow-uri-schemes file" in failures[str(secret)].message
    assert allowed[uris[1]] == png(2) and allowed[str(secret)] == png(7)


def test_a_local_list_reads_local_files_but_no_private_host(tmp_path):
    (tmp_path / "a.png").write_bytes(png(1))
    with http_server({"/b.png": png(2)}) as served:
        url = listed_uris("manifest", str(tmp_path / "list"), ["a.png", f"{served.url}/b.png"])
        values = fetch_all(open_source(url, allow_uri_schemes=("http",)))
        assert served.requests == []
    assert values[str(tmp_path / "a.png")] == png(1)
    refused = values[f"{served.url}/b.png"]
    assert isinstance(refused, ImageFailure) and "--allow-private-hosts" in refused.message


@pytest.mark.parametrize("address", ["169.254.169.254", "::ffff:169.254.169.254", "10.1.2.3",
                                     "fd00::1", "0.0.0.0", "100.100.100.200", "::1"])
def test_metadata_private_and_local_addresses_are_never_public(address):
    assert not is_public(address)  # only parsed here: nothing is sent anywhere
    with pytest.raises(RefusedUri, match="--allow-private-hosts"):
        UriPolicy.for_list(["s3://lists/a.txt"]).check(f"https://[{address}]/latest/meta-data"
                                                       if ":" in address
                                                       else f"https://{address}/latest/meta-data")
    assert is_public("8.8.8.8")


def test_the_http_client_refuses_a_private_address_wherever_a_request_goes(tmp_path):
    """The check at the socket: what a redirect, or a name resolved again, would reach."""
    with http_server({"/a.png": png(1)}) as served:
        fs, path = filesystem(f"{served.url}/a.png", UriPolicy.for_list([]).http_options())
        with pytest.raises(OSError, match="--allow-private-hosts"):
            read_capped(fs, path, 2**20)
        assert served.requests == []


def test_uri_flags_are_checked_and_parsed():
    with pytest.raises(ValueError, match="--allow-uri-schemes"):
        JobConfig(src="s", dst="d", allow_uri_schemes="http://host")
    with pytest.raises(ValueError, match="--max-image-bytes"):
        JobConfig(src="s", dst="d", max_image_bytes=0)
    args = build_parser().parse_args(["annotate", "s", "d", "--allow-uri-schemes", "http, FILE",
                                      "--allow-private-hosts", "--max-image-bytes", "1024"])
    config = config_from_args(args)
    assert (config.uri_schemes, config.allow_private_hosts, config.max_image_bytes) == (
        ("http", "file"), True, 1024)


def test_refused_uris_are_errors_rows_of_the_job(ray_cluster, tiny_model, bucket, tmp_path):
    """Through the whole job: a refusal is an errors row at stage read, and the job goes on."""
    root = Folder(f"s3://{bucket}")
    root.write_bytes("imgs/a.png", png(1))
    (tmp_path / "local.png").write_bytes(png(2))
    with http_server({"/b.png": png(3)}) as served:
        uris = [f"s3://{bucket}/imgs/a.png", f"{served.url}/b.png", str(tmp_path / "local.png")]
        url = listed_uris("manifest", f"s3://{bucket}/lists/m", uris)
        summary = annotate(JobConfig(src=url, dst=f"s3://{bucket}/out", model=tiny_model,
                                     num_workers=1, progress=False))
        assert served.requests == []
    assert (summary["images"], summary["annotated"], summary["errors"]) == (3, 1, 2)
    errors = {e["image_uri"]: e for e in read_table(Folder(f"s3://{bucket}/out"), "errors")}
    assert set(errors) == set(uris[1:])
    assert all(e["stage"] == "read" and e["message"].startswith(f"{uri}: not read: ")
               for uri, e in errors.items())
    assert "--allow-uri-schemes http" in errors[uris[1]]["message"]
    assert "--allow-uri-schemes file" in errors[uris[2]]["message"]


# --- models --------------------------------------------------------------------------------------

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
"""


def _add_remote_code(folder: Path, marker: Path, *, model_type: str | None = None) -> None:
    """The shape of a hub checkpoint that asks for its own classes (`auto_map`)."""
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModel": "modeling_evil.EvilModel",
                          "AutoModelForUniversalSegmentation": "modeling_evil.EvilModel"}
    if model_type:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor["auto_map"] = {"AutoImageProcessor": "image_processing_evil.EvilProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    for module in ("configuration_evil", "modeling_evil", "image_processing_evil"):
        (folder / f"{module}.py").write_text(EVIL.format(marker=str(marker)))


def test_remote_code_in_a_checkpoint_never_runs(tmp_path):
    import transformers
    from transformers.utils import HF_MODULES_CACHE

    started = time.time()
    marker = tmp_path / "remote-code-ran"
    folder = save_tiny_mask2former(tmp_path / "evil")
    _add_remote_code(folder, marker)
    loaded = load_model(str(folder))
    assert type(loaded.model) is transformers.Mask2FormerForUniversalSegmentation
    assert loaded.family == "mask2former"

    unknown = save_tiny_mask2former(tmp_path / "evil-only")
    _add_remote_code(unknown, marker, model_type="evil-segmenter")
    with pytest.raises(ModelLoadError, match="evil-only"):
        load_model(str(unknown))

    assert not marker.exists(), "a checkpoint's own code was imported"
    copied = [p for p in Path(HF_MODULES_CACHE).rglob("*_evil.py") if p.stat().st_mtime >= started]
    assert not copied, f"remote code was copied to run: {copied}"
