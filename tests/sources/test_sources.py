"""Sources on a local folder and on a real S3 endpoint: listing, identity, fetching, and
what happens to bad input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from PIL import Image

from segpipe.core.identity import image_id
from segpipe.core.items import DecodedImage, ImageFailure, ImageRef
from segpipe.io.storage import filesystem, is_transient, redact_uri
from segpipe.pipeline.decode import decode_image
from segpipe.sources import (
    EmptySourceError,
    ImageFiles,
    Manifest,
    ParquetTable,
    SourceConfigError,
    TarShards,
    detect_format,
    open_source,
)
from segpipe.sources.base import UNREADABLE
from segpipe.sources.listing import expand_braces, list_files
from tests.support.faultproxy import FaultProxy
from tests.support.httpserver import http_server


def png(seed: int, size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 11 % 256, 90)).save(out, "PNG")
    return out.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group_size)
    return out.getvalue()


@dataclass
class Store:
    """A root URL, local or S3, that tests write objects under."""

    root: str

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> str:
        fs, path = filesystem(self.url(key))
        if "://" not in self.root:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
        return self.url(key)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "lake"))
    return Store(f"s3://{request.getfixturevalue('bucket')}/lake")


def fetched(source, refs: list[ImageRef]) -> list[bytes | ImageFailure]:
    out = list(source.fetch(refs, threads=3))
    assert [ref for ref, _ in out] == refs  # in the order asked for
    return [value for _, value in out]


# --- image files ----------------------------------------------------------------------

def test_image_files_sorted_by_key_skipping_non_images(store: Store):
    images = {"raw/a.png": png(1), "raw/a-b.JPG": png(2), "raw/a/c.jpeg": png(3),
              "raw/z/deep/d.webp": png(4)}
    for key, data in images.items():
        store.put(key, data)
    for key in ("raw/notes.txt", "raw/a/meta.json", "raw/.hidden.png", "raw/.cache/e.png",
                "raw/png", "elsewhere/f.png"):
        store.put(key, b"not an image of this source")

    source = ImageFiles(store.url("raw"))
    refs = list(source.list_images())

    # "a-b" < "a." < "a/": the key order an object store lists in, locally too.
    order = ["raw/a-b.JPG", "raw/a.png", "raw/a/c.jpeg", "raw/z/deep/d.webp"]
    assert [r.uri for r in refs] == [store.url(k) for k in order]
    assert [r.image_id for r in refs] == [image_id(r.uri) for r in refs]
    assert all(r.version for r in refs)
    assert fetched(source, refs) == [images[k] for k in order]


def test_image_files_missing_object_is_a_read_failure_naming_it(store: Store):
    store.put("raw/a.png", png(1))
    source = ImageFiles(store.url("raw"))
    gone = ImageRef(image_id(store.url("raw/gone.png")), store.url("raw/gone.png"))
    [first, second] = fetched(source, [gone, *source.list_images()])
    assert isinstance(first, ImageFailure)
    assert first.stage == "read" and store.url("raw/gone.png") in first.message
    assert second == png(1)


def test_globs_follow_fsspec(store: Store):
    for key in ("raw/a.png", "raw/b.jpg", "raw/x/c.png", "raw/x/y/d.png", "raw/e1.png"):
        store.put(key, png(0))

    def keys(pattern: str) -> list[str]:
        return [r.uri[len(store.root) + 1:] for r in ImageFiles(store.url(pattern)).list_images()]

    assert keys("raw/**/*.png") == ["raw/a.png", "raw/e1.png", "raw/x/c.png", "raw/x/y/d.png"]
    assert keys("raw/*.png") == ["raw/a.png", "raw/e1.png"]
    assert keys("raw/*/*.png") == ["raw/x/c.png"]
    assert keys("raw/e?.png") == ["raw/e1.png"]
    assert keys("raw/[ab].*") == ["raw/a.png", "raw/b.jpg"]


def test_s3_listing_pages_in_key_order(bucket: str, tmp_path):
    keys = ["p/a.png", "p/a-b.png", "p/a/b.png", "p/b.png", "p/a/c/d.png", "p/B.png",
            "p/\u00e9.png"]
    s3, local = Store(f"s3://{bucket}"), Store(str(tmp_path))
    for key in keys:
        s3.put(key, b"x")
        local.put(key, b"x")
    on_s3 = [e.uri[len(s3.root) + 1:] for e in list_files(s3.url("p"), page_size=2)]
    on_disk = [e.uri[len(local.root) + 1:] for e in list_files(local.url("p"))]
    assert on_s3 == sorted(keys)
    assert on_disk == on_s3


def test_single_file_url(store: Store):
    url = store.put("raw/only.png", png(1))
    assert [r.uri for r in ImageFiles(url).list_images()] == [url]


# --- WebDataset ---------------------------------------------------------------------------

def wds_shard(index: int) -> list[tuple[str, bytes]]:
    return [
        (f"s{index}-0.jpg", png(index * 10)), (f"s{index}-0.json", b"{}"),
        (f"s{index}-0.cls", b"3"),
        (f"sub/s{index}-1.PNG", png(index * 10 + 1)), (f"sub/s{index}-1.seg.png", png(99)),
        (f"s{index}-2.txt", b"a caption, no image"),
        (f"s{index}-3.webp.json", b"{}"), (f"s{index}-3.webp", png(index * 10 + 3)),
    ]


def test_webdataset_brace_pattern(store: Store):
    for i in range(3):
        store.put(f"wds/shard-{i:04d}.tar", tar_bytes(wds_shard(i)))
    source = open_source(store.url("wds/shard-{0000..0002}.tar"))
    assert isinstance(source, TarShards)
    refs = list(source.list_images())

    expected = [(store.url(f"wds/shard-{i:04d}.tar"), name) for i in range(3)
                for name in (f"s{i}-0.jpg", f"sub/s{i}-1.PNG", f"s{i}-3.webp")]
    assert [(r.uri, r.member) for r in refs] == expected
    assert [r.image_id for r in refs] == [image_id(u, m) for u, m in expected]
    members = {(store.url(f"wds/shard-{i:04d}.tar"), n): d
               for i in range(3) for n, d in wds_shard(i)}
    assert fetched(source, refs) == [members[(r.uri, r.member)] for r in refs]
    # a shard may start anywhere in a tar and span two of them
    assert fetched(source, refs[4:7]) == [members[(r.uri, r.member)] for r in refs[4:7]]


def test_tar_with_a_corrupt_member_fails_that_image_only(store: Store):
    members = [("a.jpg", png(1)), ("b.jpg", b"\xff\xd8 not really a jpeg"), ("c.png", png(3))]
    source = TarShards(store.put("t.tar", tar_bytes(members)))
    refs = list(source.list_images())
    decoded = [decode_image(ref, data, max_pixels=10**6) for ref, data in source.fetch(refs)]
    failures = [d for d in decoded if isinstance(d, ImageFailure)]
    assert [f.ref.member for f in failures] == ["b.jpg"]
    assert store.url("t.tar") in failures[0].message
    assert sum(isinstance(d, DecodedImage) for d in decoded) == 2


def test_truncated_and_damaged_tars_become_failures(store: Store):
    members = [("a.png", png(1) * 40), ("b.png", png(2) * 40), ("c.png", png(3)), ("d.png", png(4))]
    whole = tar_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        b_data, c_header = tar.getmember("b.png").offset_data, tar.getmember("c.png").offset
    store.put("w-0.tar", whole[: b_data + 100])  # cut inside b's data
    store.put("w-1.tar", whole[:c_header] + b"\x7f" * 512 + whole[c_header + 512:])  # c's header
    store.put("w-2.tar", b"this is no tar at all" * 40)
    store.put("w-3.tar", whole)
    source = TarShards(store.url("w-{0..4}.tar"))  # w-4.tar does not exist
    refs = list(source.list_images())

    def named(i: int, member: str) -> tuple[str, str]:
        return store.url(f"w-{i}.tar"), member

    assert [(r.uri, r.member) for r in refs] == [
        named(0, "a.png"), named(0, "b.png"), named(0, UNREADABLE),
        named(1, "a.png"), named(1, "b.png"), named(1, UNREADABLE),
        named(2, UNREADABLE),
        named(3, "a.png"), named(3, "b.png"), named(3, "c.png"), named(3, "d.png"),
        named(4, UNREADABLE),
    ]
    values = fetched(source, refs)
    ok = [r.display for r, v in zip(refs, values, strict=True) if isinstance(v, bytes)]
    assert ok == [store.url(f"w-{i}.tar#{m}.png") for i, m in
                  [(0, "a"), (1, "a"), (1, "b"), (3, "a"), (3, "b"), (3, "c"), (3, "d")]]
    for ref, value in zip(refs, values, strict=True):
        if isinstance(value, ImageFailure):
            assert value.stage == "read" and ref.display in value.message
    assert values[7:11] == [d for _, d in members]


def test_no_tar_exists_is_an_empty_source(store: Store):
    with pytest.raises(EmptySourceError, match="nothing readable"):
        list(TarShards(store.url("none-{0..2}.tar")).list_images())


def test_expand_braces():
    assert expand_braces("s-{0008..0011}.tar") == [f"s-{i:04d}.tar" for i in range(8, 12)]
    assert expand_braces("{b,a}/{1..2}") == ["b/1", "b/2", "a/1", "a/2"]
    assert expand_braces("{a,{b,c}}") == ["a", "b", "c"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("keep{x}") == ["keep{x}"]


# --- Parquet --------------------------------------------------------------------------

def image_table(n: int) -> pa.Table:
    return pa.table({
        "id": [f"img-{i}" for i in range(n)],
        "image": pa.array([png(i) for i in range(n)], pa.binary()),
        "label": list(range(n)),
        "caption": [f"caption {i}" for i in range(n)],
        "embedding": [[0.5] * 4 for _ in range(n)],  # not a scalar: not carried
    })


def test_parquet_bytes_with_id_column_and_fields(store: Store):
    url = store.put("tbl/part-0.parquet", parquet_bytes(image_table(5), row_group_size=2))
    source = ParquetTable(store.url("tbl/part-0.parquet"), id_column="id")
    refs = list(source.list_images())
    assert [r.member for r in refs] == [f"img-{i}" for i in range(5)]
    assert [r.uri for r in refs] == [url] * 5
    assert [r.image_id for r in refs] == [image_id(url, f"img-{i}") for i in range(5)]
    assert refs[3].fields == {"id": "img-3", "label": 3, "caption": "caption 3"}
    # rows from two row groups, out of the listing's order
    assert fetched(source, [refs[4], refs[1], refs[2]]) == [png(4), png(1), png(2)]

    by_row = list(ParquetTable(url).list_images())
    assert [r.member for r in by_row] == [f"row={i}" for i in range(5)]
    assert fetched(ParquetTable(url), by_row) == [png(i) for i in range(5)]


def test_parquet_hugging_face_image_struct(store: Store):
    images = pa.array([{"bytes": png(0), "path": "a.png"}, {"bytes": None, "path": "b.png"},
                       {"bytes": png(2), "path": "c.png"}])
    table = pa.table({"image": images, "label": [7, 8, 9]})
    url = store.put("hf/train.parquet", parquet_bytes(table))
    source = open_source(url)
    refs = list(source.list_images())
    assert [r.fields for r in refs] == [{"label": 7}, {"label": 8}, {"label": 9}]
    values = fetched(source, refs)
    assert values[0] == png(0) and values[2] == png(2)
    assert isinstance(values[1], ImageFailure) and "row=1" in values[1].message


def test_parquet_of_uris(store: Store):
    store.put("imgs/a.png", png(1))
    store.put("imgs/b.png", png(2))
    paths = ["imgs/a.png", store.url("imgs/b.png"), "imgs/missing.png", "imgs/a.png"]
    table = pa.table({"path": paths, "split": ["train", "val", "val", "train"]})
    store.put("uris.parquet", parquet_bytes(table))
    source = open_source(store.url("uris.parquet"))
    refs = list(source.list_images())
    uris = [store.url("imgs/a.png"), store.url("imgs/b.png"), store.url("imgs/missing.png")]
    # Relative URIs resolved; the repeated row is listed, and the plan drops it.
    assert [r.uri for r in refs] == [*uris, uris[0]]
    assert [r.image_id for r in refs] == [image_id(u) for u in [*uris, uris[0]]]
    assert [r.fields for r in refs] == [{"split": "train"}, {"split": "val"}, {"split": "val"},
                                        {"split": "train"}]
    refs = refs[:3]
    values = fetched(source, refs)
    assert values[:2] == [png(1), png(2)]
    assert isinstance(values[2], ImageFailure) and uris[2] in values[2].message


def test_parquet_folder_is_detected_and_read_in_key_order(store: Store):
    store.put("t/part-1.parquet", parquet_bytes(image_table(2)))
    store.put("t/part-0.parquet", parquet_bytes(image_table(3)))
    store.put("t/_SUCCESS", b"")
    source = open_source(store.url("t"))
    assert isinstance(source, ParquetTable)
    refs = list(source.list_images())
    assert [(r.uri, r.member) for r in refs] == (
        [(store.url("t/part-0.parquet"), f"row={i}") for i in range(3)]
        + [(store.url("t/part-1.parquet"), f"row={i}") for i in range(2)])


def test_parquet_id_column_must_be_unique(tmp_path):
    table = pa.table({"id": ["x", "y", "x"], "image": pa.array([png(0)] * 3, pa.binary())})
    (tmp_path / "t.parquet").write_bytes(parquet_bytes(table))
    with pytest.raises(SourceConfigError, match="repeats 1 value"):
        list(ParquetTable(str(tmp_path / "t.parquet"), id_column="id").list_images())


def test_parquet_without_image_or_uri_column_is_a_clear_error(tmp_path):
    (tmp_path / "t.parquet").write_bytes(parquet_bytes(pa.table({"label": [1, 2]})))
    with pytest.raises(SourceConfigError, match="--image-column or --uri-column"):
        list(open_source(str(tmp_path / "t.parquet")).list_images())


def test_corrupt_parquet_file_is_one_failure_and_the_rest_goes_on(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (tmp_path / "t" / "b.parquet").write_bytes(parquet_bytes(image_table(2)))
    source = ParquetTable(str(tmp_path / "t"))
    refs = list(source.list_images())
    assert [r.member for r in refs] == [UNREADABLE, "row=0", "row=1"]
    values = fetched(source, refs)
    assert isinstance(values[0], ImageFailure) and "a.parquet" in values[0].message
    assert values[1:] == [png(0), png(1)]


# --- manifests ----------------------------------------------------------------------------

def test_text_manifest(store: Store):
    store.put("imgs/a.png", png(1))
    store.put("imgs/b.png", png(2))
    text = f"# a comment\nimgs/a.png\n\n  {store.url('imgs/b.png')}  \nimgs/gone.png\nimgs/a.png\n"
    source = open_source(store.put("list.txt", text.encode()))
    assert isinstance(source, Manifest)
    *refs, repeat = source.list_images()  # the plan drops the repeat (see test_plan)
    uris = [store.url("imgs/a.png"), store.url("imgs/b.png"), store.url("imgs/gone.png")]
    assert [r.uri for r in refs] == uris and repeat == refs[0]
    assert [r.image_id for r in refs] == [image_id(u) for u in uris]
    values = fetched(source, refs)
    assert values[:2] == [png(1), png(2)]
    assert isinstance(values[2], ImageFailure) and values[2].stage == "read"
    assert uris[2] in values[2].message


def test_csv_manifest_carries_other_columns(store: Store):
    a = store.put("imgs/a.png", png(1))
    store.put("imgs/b.png", png(2))
    source = open_source(store.put("m.csv", f"label,url\ncat,{a}\ndog,imgs/b.png\n,\n".encode()))
    skipped: Counter[str] = Counter()
    refs = list(source.list_images(skipped=skipped))
    assert [(r.uri, r.fields) for r in refs] == [
        (a, {"label": "cat"}), (store.url("imgs/b.png"), {"label": "dog"})]
    assert skipped == {"no_uri": 1}  # the row without a URI, counted rather than lost
    assert fetched(source, refs) == [png(1), png(2)]


def test_a_manifest_served_over_http_names_images_beside_it():
    """Relative entries of a web server's manifest resolve against its URL's folder."""
    files = {"/lists/m.txt": b"a.png\n../imgs/b.png\n", "/lists/a.png": png(1),
             "/imgs/b.png": png(2)}
    with http_server(files) as served:
        source = open_source(f"{served.url}/lists/m.txt", allow_uri_schemes=("http",),
                             allow_private_hosts=True)
        refs = list(source.list_images())
        assert [r.uri for r in refs] == [f"{served.url}/lists/a.png", f"{served.url}/imgs/b.png"]
        assert fetched(source, refs) == [png(1), png(2)]


def test_csv_manifest_without_uri_column(tmp_path):
    (tmp_path / "m.csv").write_text("name,label\na.png,1\n")
    with pytest.raises(SourceConfigError, match="no URI column"):
        list(open_source(str(tmp_path / "m.csv")).list_images())


# --- picking the kind, determinism ----------------------------------------------------------

def test_detect_format(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(0))
    (tmp_path / "imgs" / "index.parquet").write_bytes(parquet_bytes(image_table(1)))
    (tmp_path / "tbl").mkdir()
    (tmp_path / "tbl" / "p.parquet").write_bytes(parquet_bytes(image_table(1)))
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "s.tar").write_bytes(tar_bytes([("a.png", png(0))]))
    cases = {
        "s3://lake/shard-{000..009}.tar": "webdataset", "s3://lake/one.TAR": "webdataset",
        "s3://lake/t.parquet": "parquet", "gs://lake/*.parquet": "parquet",
        "s3://lake/list.txt": "manifest", "/data/m.csv": "manifest", "m.lst": "manifest",
        str(tmp_path / "imgs"): "images", str(tmp_path / "tbl"): "parquet",
        str(tmp_path / "wds"): "webdataset", str(tmp_path / "empty"): "images",
    }
    assert {url: detect_format(url) for url in cases} == cases
    assert isinstance(open_source(str(tmp_path / "tbl"), source_format="images"), ImageFiles)
    manifest = open_source(str(tmp_path / "tbl" / "p.parquet"), source_format="manifest")
    assert isinstance(manifest, ParquetTable) and manifest.uris_only
    with pytest.raises(ValueError, match="--id-column"):
        open_source(str(tmp_path / "imgs"), id_column="id")
    with pytest.raises(ValueError, match="unknown --source-format"):
        open_source(str(tmp_path / "imgs"), source_format="video")


def test_every_kind_lists_the_same_twice_with_distinct_ids(tmp_path):
    lake = Store(str(tmp_path))
    for i in range(3):
        lake.put(f"imgs/{i}.png", png(i))
    lake.put("w.tar", tar_bytes(wds_shard(0)))
    lake.put("t.parquet", parquet_bytes(image_table(3)))
    lake.put("m.txt", b"imgs/0.png\nimgs/2.png\n")
    sources = [open_source(lake.url(k)) for k in ("imgs", "w.tar", "t.parquet", "m.txt")]
    first = [ref for s in sources for ref in s.list_images()]
    assert first == [ref for s in sources for ref in s.list_images()]
    # the manifest names images of the folder: the same URI is the same image
    assert len({r.image_id for r in first}) == len(first) - 2
    assert len({r.image_id for r in first if r.member is not None}) == 3 + 3


def test_other_filesystems_walk_in_the_same_key_order(tmp_path):
    keys = ["a.png", "a-b.png", "a/b.png", ".h/x.png", "b/c/d.png"]
    local = Store(str(tmp_path))
    memory = Store(f"memory://{tmp_path.name}")  # walked folder by folder, like gs:// or az://
    for key in keys:
        local.put(key, b"x")
        memory.put(key, b"x")
    in_memory = [e.uri.split(tmp_path.name, 1)[1] for e in list_files(memory.root)]
    on_disk = [e.uri.split(tmp_path.name, 1)[1] for e in list_files(local.root)]
    assert in_memory == on_disk == ["/a-b.png", "/a.png", "/a/b.png", "/b/c/d.png"]


# --- signed URIs ---------------------------------------------------------------------------

# The test S3 endpoint signs URLs on http://127.0.0.1, which the URIs of a list may reach only
# when the job allows it.
LOOPBACK_URIS = {"allow_uri_schemes": ("http",), "allow_private_hosts": True}


def signed_url(endpoint: str, bucket: str, key: str, *, v4: bool = True,
               expires: int = 3600) -> str:
    """A presigned GET URL from the test S3 endpoint: SigV4, or the older `Signature=` form."""
    config = Config(signature_version="s3v4") if v4 else None
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)
    return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                         ExpiresIn=expires)


def secrets_of(*uris: str) -> set[str]:
    """The credential values in signed URLs, as written and percent-decoded."""
    found = set(re.findall(r"(?:Signature|X-Amz-Signature|X-Amz-Credential|AWSAccessKeyId)=([^&]+)",
                           "\n".join(uris)))
    assert found, "no signed URL among these"
    return found | {unquote(value) for value in found}


def test_signed_manifest_urls_are_listed_redacted_and_fetched(bucket: str, s3_endpoint: str):
    store = Store(f"s3://{bucket}")
    for i in range(3):
        store.put(f"imgs/{i}.png", png(i))
    v4, v2 = signed_url(s3_endpoint, bucket, "imgs/0.png"), signed_url(s3_endpoint, bucket,
                                                                       "imgs/1.png", v4=False)
    again = signed_url(s3_endpoint, bucket, "imgs/0.png", expires=60)  # the same image, re-signed
    assert again != v4
    text = f"\ufeff{v4}\r\n# {v2}\r\n{v2}\n\nimgs/2.png\n{again}"
    source = open_source(store.put("list.txt", text.encode()), **LOOPBACK_URIS)
    *refs, resigned = source.list_images()

    assert [r.uri for r in refs] == [redact_uri(v4), redact_uri(v2), store.url("imgs/2.png")]
    assert resigned.image_id == refs[0].image_id  # one image: the plan drops the repeat
    assert [r.image_id for r in refs] == [image_id(r.uri) for r in refs]
    assert all("<redacted>" in r.uri and r.locator for r in refs[:2])
    assert refs[2].locator is None and refs[2].to_json() == {"id": refs[2].image_id,
                                                             "uri": store.url("imgs/2.png")}
    planned = json.dumps([r.to_json() for r in refs])
    assert not {s for s in secrets_of(v4, v2, again) if s in planned}
    assert fetched(source, refs) == [png(0), png(1), png(2)]
    assert fetched(source, [refs[1]]) == [png(1)]  # a ref alone, as a shard may hold it


def test_signed_csv_urls_are_found_again_in_multi_line_entries(bucket: str, s3_endpoint: str):
    store = Store(f"s3://{bucket}")
    store.put("imgs/a.png", png(1))
    store.put("imgs/b.png", png(2))
    a, b = (signed_url(s3_endpoint, bucket, f"imgs/{k}.png") for k in "ab")
    text = ('note,url,url\n'
            f'"two\nlines, and a comma",ignored,{a}\r\n'
            f'plain,ignored,"{b}"\n')
    source = open_source(store.put("list.csv", text.encode()), **LOOPBACK_URIS)
    refs = list(source.list_images())
    # A repeated column name reads as its last column, as before.
    assert [(r.uri, r.fields) for r in refs] == [
        (redact_uri(a), {"note": "two\nlines, and a comma"}), (redact_uri(b), {"note": "plain"})]
    assert fetched(source, refs) == [png(1), png(2)]


def test_manifest_spans_hold_across_line_ends_and_far_apart_entries(tmp_path):
    """Local files named like signed URLs; \\r, \\r\\n and \\n line ends, one of them split
    across two of the reader's chunks; entries too far apart to be re-read with one read."""
    names = [f"{c}.png?X-Amz-Signature={c * 16}" for c in "abcd"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(png(i))
    head = f"{names[0]}\r{names[1]}\r\n"
    pad = "#" * (2**20 - len(head) - 1)  # its \r is the chunk's last byte, its \n the next's
    text = f"{head}{pad}\r\n{'#' * 2**20}\n{names[2]}\n{names[3]}"
    (tmp_path / "m.lst").write_text(text)
    source = open_source(str(tmp_path / "m.lst"))
    refs = list(source.list_images())
    assert [r.uri for r in refs] == [redact_uri(str(tmp_path / n)) for n in names]
    assert all(r.locator and "X-Amz-Signature=<redacted>" in r.uri for r in refs)
    assert fetched(source, refs) == [png(i) for i in range(4)]
    assert fetched(source, refs[::-1]) == [png(i) for i in range(4)][::-1]


def test_manifest_edited_after_planning_fails_only_the_edited_image(bucket: str, s3_endpoint: str):
    store = Store(f"s3://{bucket}")
    for i in range(4):
        store.put(f"imgs/{i}.png", png(i))
    urls = [signed_url(s3_endpoint, bucket, f"imgs/{i}.png") for i in range(3)]
    store.put("list.txt", "\n".join([*urls, "imgs/3.png"]).encode())
    source = open_source(store.url("list.txt"), **LOOPBACK_URIS)
    refs = list(source.list_images())

    # Edited in place: line 1 now names another image, line 2 the same one signed anew.
    edited = [urls[0], signed_url(s3_endpoint, bucket, "imgs/3.png"),
              signed_url(s3_endpoint, bucket, "imgs/2.png", expires=1800), "imgs/3.png"]
    assert [len(u) for u in edited[:3]] == [len(u) for u in urls]  # same spans, other bytes
    assert edited[2] != urls[2]
    store.put("list.txt", "\n".join(edited).encode())
    values = fetched(source, refs)
    assert values[0] == png(0) and values[2:] == [png(2), png(3)]
    failure = values[1]
    assert isinstance(failure, ImageFailure) and failure.stage == "read"
    assert failure.error_type == "SourceChangedError"
    # (`redact` takes the ":" after a URI's last redacted value along with it.)
    assert failure.message.startswith(redact_uri(urls[1]))
    assert (f"the manifest {store.url('list.txt')} changed since this run was planned: the "
            f"entry at bytes={len(urls[0]) + 1}+{len(urls[1]) + 1} no longer lists this image "
            f"but {redact_uri(edited[1])}") in failure.message
    assert not {s for s in secrets_of(*urls, *edited) if s in failure.message}

    # Cut short: the entries past its end list nothing any more.
    store.put("list.txt", f"{urls[0]}\n".encode())
    values = fetched(source, refs)
    assert values[0] == png(0) and values[3] == png(3)
    starts = [len(urls[0]) + 1, len(urls[0]) + len(urls[1]) + 2]
    assert [v.message.rsplit(": ", 1)[-1] for v in values[1:3]] == [  # type: ignore[union-attr]
        f"the entry at bytes={start}+{len(u) + 1} no longer lists this image"
        for start, u in zip(starts, urls[1:3], strict=True)]

    # Gone altogether: each signed image fails naming the manifest; the plain one still reads.
    filesystem(store.url("list.txt"))[0].rm_file(f"{bucket}/list.txt")
    values = fetched(source, refs)
    assert values[3] == png(3)
    for ref, value in zip(refs[:3], values[:3], strict=True):
        assert isinstance(value, ImageFailure) and value.stage == "read"
        assert f"the manifest {store.url('list.txt')} could not be re-read" in value.message
        assert value.message.startswith(ref.uri)


def test_signed_urls_in_a_parquet_table_are_found_again_by_row(bucket: str, s3_endpoint: str):
    store = Store(f"s3://{bucket}")
    for i in range(5):
        store.put(f"imgs/{i}.png", png(i))
    urls = [signed_url(s3_endpoint, bucket, f"imgs/{i}.png", v4=i % 2 == 0) for i in range(4)]
    column = [urls[0], None, urls[1], "../imgs/4.png", urls[2], "  ", urls[3]]

    def table(uris: list[str | None]) -> bytes:
        return parquet_bytes(pa.table({"url": uris, "n": list(range(len(uris)))}),
                             row_group_size=3)

    url = store.put("t/uris.parquet", table(column))
    source = open_source(url, source_format="manifest", **LOOPBACK_URIS)
    refs = list(source.list_images())
    assert [r.uri for r in refs] == [redact_uri(u) for u in urls[:2]] + [
        store.url("imgs/4.png"), *(redact_uri(u) for u in urls[2:])]
    assert [r.fields for r in refs] == [{"n": n} for n in (0, 2, 3, 4, 6)]
    assert [r.locator for r in refs] == [f"{url}#row={n}" if n != 3 else None
                                         for n in (0, 2, 3, 4, 6)]
    expected = [png(0), png(1), png(4), png(2), png(3)]
    assert fetched(source, refs) == expected
    # Signed rows 6, 4 and 0: one in each of the three row groups, in reverse order.
    picked = [refs[4], refs[3], refs[0]]
    assert fetched(source, picked) == [expected[4], expected[3], expected[0]]

    column[4] = signed_url(s3_endpoint, bucket, "imgs/0.png")  # row 4 now names another image
    store.put("t/uris.parquet", table(column))
    values = fetched(source, refs)
    assert values[:3] + values[4:] == [png(0), png(1), png(4), png(3)]
    assert isinstance(values[3], ImageFailure) and values[3].error_type == "SourceChangedError"
    assert values[3].message.startswith(refs[3].uri)
    assert values[3].message.endswith(f"the URI table {url} changed since this run was planned: "
                                      f"row 4 no longer lists this image but {redact_uri(column[4])}")


# --- entries that cannot be read ------------------------------------------------------------------

def test_a_csv_field_over_the_limit_is_an_errors_row_and_planning_goes_on(store: Store):
    for name in ("a", "c", "d"):
        store.put(f"imgs/{name}.png", png(ord(name)))
    caption = "x" * (200 * 1024)  # over the csv module's field limit (128 KiB)
    text = (f'url,caption\nimgs/a.png,fine\n"imgs/b.png","{caption}"\nimgs/c.png,also fine\n'
            "imgs/d.png,\n")
    manifest = store.put("m.csv", text.encode())
    source = open_source(manifest)

    refs = list(source.list_images())

    assert [r.member or r.uri for r in refs] == [
        store.url("imgs/a.png"), "line=3", store.url("imgs/c.png"), store.url("imgs/d.png")]
    assert refs[1].uri == manifest and refs[1].image_id == image_id(manifest, "line=3")
    values = fetched(source, refs)
    assert [values[0], values[2], values[3]] == [png(ord("a")), png(ord("c")), png(ord("d"))]
    failure = values[1]
    assert isinstance(failure, ImageFailure) and failure.stage == "read"
    assert failure.message.startswith(f"{manifest}#line=3: ")  # the file and the row
    assert "not valid CSV" in failure.message and "field limit" in failure.message


def test_a_manifest_line_that_is_not_utf8_is_an_errors_row(store: Store):
    store.put("imgs/a.png", png(1))
    store.put("imgs/c.png", png(3))
    manifest = store.put("list.txt", b"imgs/a.png\nimgs/\xff\xfeb.png\nimgs/c.png\n")
    source = open_source(manifest)
    refs = list(source.list_images())
    assert [r.member for r in refs] == [None, "line=2", None]
    values = fetched(source, refs)
    assert values[0] == png(1) and values[2] == png(3)
    assert isinstance(values[1], ImageFailure)
    assert values[1].message.startswith(f"{manifest}#line=2: ")
    assert "not valid UTF-8" in values[1].message


# --- what a listing does not list -------------------------------------------------------------

@pytest.mark.timeout(60)  # a listing that opened the FIFO would wait for a writer for ever
def test_a_fifo_or_a_dangling_link_is_skipped_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    os.mkfifo(src / "pipe.png")
    os.symlink(src / "gone.png", src / "dangling.png")
    skipped: Counter[str] = Counter()
    source = ImageFiles(str(src))

    refs = list(source.list_images(skipped=skipped))

    assert [r.uri for r in refs] == [str(src / "a.png")]
    assert skipped == {"not_regular_file": 2}
    assert fetched(source, refs) == [png(1)]
    outside: Counter[str] = Counter()  # what a glob does not name is not counted
    assert len(list(ImageFiles(str(src / "a*.png")).list_images(skipped=outside))) == 1
    assert outside == {}


def test_converging_symlinked_folders_are_walked_once(tmp_path):
    """a/x and b/y both link to c, and c/loop links back to the root: each real folder is
    walked once, from the first path in key order, and every other path to it is counted."""
    root = tmp_path / "src"
    (root / "c" / "deep").mkdir(parents=True)
    (root / "c" / "img.png").write_bytes(png(1))
    (root / "c" / "deep" / "d.png").write_bytes(png(2))
    (root / "a").mkdir()
    (root / "b").mkdir()
    os.symlink(root / "c", root / "a" / "x")
    os.symlink(root / "c", root / "b" / "y")
    os.symlink(root, root / "c" / "loop")
    skipped: Counter[str] = Counter()

    uris = [r.uri for r in ImageFiles(str(root)).list_images(skipped=skipped)]

    assert uris == [str(root / "a/x/deep/d.png"), str(root / "a/x/img.png")]
    assert skipped == {"folder_seen": 3}  # a/x/loop, b/y and c itself


# --- the byte limit of an image -------------------------------------------------------------

def test_an_image_over_the_byte_limit_is_an_errors_row_naming_its_size(store: Store):
    store.put("raw/a.png", png(1))
    store.put("raw/big.png", b"\x89PNG" + bytes(4996))
    store.put("raw/exact.png", bytes(1000))
    store.put("raw/empty.png", b"")  # S3 refuses a range of an empty object: still no error
    for source in (ImageFiles(store.url("raw"), max_image_bytes=1000),
                   open_source(store.put("m.txt", b"raw/a.png\nraw/big.png\nraw/empty.png\n"
                                                  b"raw/exact.png\n"), max_image_bytes=1000)):
        refs = list(source.list_images())
        assert [r.uri.rsplit("/", 1)[1] for r in refs] == ["a.png", "big.png", "empty.png",
                                                            "exact.png"]
        values = fetched(source, refs)
        assert [values[0], values[2], values[3]] == [png(1), b"", bytes(1000)]
        failure = values[1]
        assert isinstance(failure, ImageFailure) and failure.stage == "read"
        assert failure.message == (f"{store.url('raw/big.png')}: not read: 5000 bytes, over the "
                                   "limit of 1000 bytes per image (--max-image-bytes)")


def test_container_members_over_the_byte_limit_are_errors_rows(store: Store):
    members = [("a.png", png(1)), ("b.png", bytes(3000)), ("c.png", png(3))]
    tars = TarShards(store.put("t.tar", tar_bytes(members)), max_image_bytes=2000)
    table = pa.table({"image": pa.array([png(1), bytes(3000), png(3)], pa.binary())})
    rows = ParquetTable(store.put("t.parquet", parquet_bytes(table)), max_image_bytes=2000)
    for source in (tars, rows):
        values = fetched(source, list(source.list_images()))
        assert [values[0], values[2]] == [png(1), png(3)]
        assert isinstance(values[1], ImageFailure)
        assert "3000 bytes, over the limit of 2000 bytes per image (--max-image-bytes)" in (
            values[1].message)


def test_an_http_image_over_the_limit_is_not_downloaded_whole(tmp_path):
    """The server ignores Range, as many do: the read stops after the limit anyway."""
    huge = bytes(256 * 2**20)
    with http_server({"/huge.jpg": huge, "/small.png": png(1)}) as served:
        (tmp_path / "m.txt").write_text(f"{served.url}/huge.jpg\n{served.url}/small.png\n")
        source = open_source(str(tmp_path / "m.txt"), max_image_bytes=2**20, **LOOPBACK_URIS)
        values = fetched(source, list(source.list_images()))
        assert values[1] == png(1)
        assert isinstance(values[0], ImageFailure)
        assert f"{len(huge)} bytes, over the limit of {2**20} bytes" in values[0].message
        assert served.bytes_sent < len(huge) // 4  # the limit, and what sockets buffered


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_a_container_read_failing_transiently_fails_the_shard_not_its_images(
        bucket: str, s3_endpoint: str, kind: str):
    """One error policy for every source: storage that keeps answering 503 after the retries
    is an outage, so the shard fails (and the pool retries it later) rather than committing
    its images as errors rows for good, as it does for reads of one object per image."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if kind == "webdataset":
        key, body = "w.tar", tar_bytes([("a.png", png(1)), ("b.png", png(2))])
    else:
        out = io.BytesIO()
        pq.write_table(pa.table({"image": [png(1), png(2)]}), out)
        key, body = "t.parquet", out.getvalue()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    url = f"s3://{bucket}/{key}"
    refs = list(open_source(url, source_format=kind).list_images())
    assert len(refs) == 2
    no_retries = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}
    with FaultProxy(s3_endpoint, rate=1.0, faults=("503",)) as proxy:
        through_proxy = open_source(url, source_format=kind,
                                    storage_options={"endpoint_url": proxy.url, **no_retries})
        with pytest.raises(OSError) as raised:
            list(through_proxy.fetch(refs))
    assert is_transient(raised.value) and proxy.injected["503"] >= 1


def test_a_local_listing_does_not_import_the_s3_client(tmp_path):
    # Importing s3fs (aiobotocore, aiohttp) costs most of a second of CPU, and a local run
    # lists its source while Ray starts beside it. A process of its own: this one has S3 loaded.
    (tmp_path / "a.jpg").write_bytes(b"x")
    script = ("import sys; from segpipe.sources.listing import list_files; "
              f"names = [e.path for e in list_files({str(tmp_path)!r})]; "
              "print(names, 's3fs' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"
    assert "a.jpg" in done.stdout


def test_s3_urls_still_list_through_s3s_own_pages(bucket: str, tmp_path):
    # The protocol check that spares a local run the s3fs import must still tell S3 apart,
    # under either of its schemes: a walk in place of S3's pages would list the same keys.
    from segpipe.sources.listing import _is_s3

    assert _is_s3(filesystem(f"s3://{bucket}/p")[0])
    assert _is_s3(filesystem(f"s3a://{bucket}/p")[0])
    assert not _is_s3(filesystem(str(tmp_path))[0])
