"""The shard plan: deterministic, streamed, each image once, clear about an empty source
and about what it skipped."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from segpipe.cli import main
from segpipe.core.identity import image_id, shard_id
from segpipe.core.items import ImageRef
from segpipe.destination import layout
from segpipe.destination.plan import (
    EmptySourceError,
    Plan,
    SeenIds,
    load_shard,
    read_plan,
    write_plan,
)
from segpipe.io.storage import Folder, redact_uri
from segpipe.pipeline.shard import prefetch_decoded
from segpipe.sources import ImageFiles, open_source
from segpipe.sources.base import Skipped
from segpipe.sources.redacted import WITHHELD
from tests.sources.test_sources import (
    LOOPBACK_URIS,
    Store,
    image_table,
    parquet_bytes,
    png,
    secrets_of,
    signed_url,
    tar_bytes,
    wds_shard,
)
from tests.support.images import write_images
from tests.support.outputs import read_panoptic, read_table


def plan_files(dst: Folder) -> dict[str, bytes]:
    return {key: dst.read_bytes(key) for key in dst.list(layout.META)}


def test_plan_splits_the_listing_into_shards(tmp_path):
    write_images(tmp_path / "src" / "b", 4)
    write_images(tmp_path / "src" / "a", 3)
    source = ImageFiles(str(tmp_path / "src"))
    dst = Folder(str(tmp_path / "dst"))

    plan = write_plan(source, dst, "00001", shard_size=3)

    listed = list(source.list_images())
    assert plan == Plan("00001", 3, 7) == read_plan(dst, "00001")
    shards = [load_shard(dst, "00001", sid) for sid in plan.shard_ids()]
    assert [s.shard_id for s in shards] == [shard_id("00001", i) for i in range(3)]
    assert [len(s.images) for s in shards] == [3, 3, 1]
    assert [ref for s in shards for ref in s.images] == listed
    assert all(s.run_id == "00001" for s in shards)


def test_plan_twice_gives_the_same_bytes(tmp_path, bucket):
    write_images(tmp_path / "src", 5)
    first, second = Folder(str(tmp_path / "one")), Folder(f"s3://{bucket}/two")
    write_plan(ImageFiles(str(tmp_path / "src")), first, "00001", shard_size=2)
    write_plan(ImageFiles(str(tmp_path / "src")), second, "00001", shard_size=2)
    files = plan_files(first)
    assert len(files) == 4  # three shards, then plan.json
    assert files == plan_files(second)


def test_plan_is_not_complete_until_plan_json(tmp_path):
    dst = Folder(str(tmp_path / "dst"))
    assert read_plan(dst, "00001") is None
    write_images(tmp_path / "src", 2)
    write_plan(ImageFiles(str(tmp_path / "src")), dst, "00001", shard_size=1)
    dst.delete(layout.plan_done("00001"))
    assert read_plan(dst, "00001") is None


def test_skipped_images_are_not_planned(tmp_path):
    write_images(tmp_path / "src", 4)
    source = ImageFiles(str(tmp_path / "src"))
    skipped = {ref.image_id for ref in list(source.list_images())[::2]}
    dst = Folder(str(tmp_path / "dst"))
    plan = write_plan(source, dst, "00002", shard_size=10, skip=lambda ref: ref.image_id in skipped)
    assert plan.num_images == 2
    planned = load_shard(dst, "00002", shard_id("00002", 0)).images
    assert {ref.image_id for ref in planned}.isdisjoint(skipped) and len(planned) == 2


@dataclass
class CountingSource:
    """A source of generated refs that checks, as it is read, that the plan keeps up."""

    url: str
    count: int
    dst: Folder
    shard_size: int

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        for i in range(self.count):
            # Every shard full before this ref must be on storage already.
            for done in range(i // self.shard_size):
                key = layout.plan_shard("00001", shard_id("00001", done))
                assert self.dst.exists(key), f"shard {done} not written when ref {i} was read"
            uri = f"{self.url}/{i:05d}.jpg"
            yield ImageRef(image_id(uri), uri)

    def fetch(self, refs, *, threads=8):
        raise NotImplementedError


def test_plan_writes_each_shard_as_soon_as_it_is_full(tmp_path):
    dst = Folder(str(tmp_path / "dst"))
    source = CountingSource("s3://synthetic/raw", 23, dst, shard_size=5)
    assert write_plan(source, dst, "00001", shard_size=5) == Plan("00001", 5, 23)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_empty_source_names_the_url(where, tmp_path, request):
    if where == "local":
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "readme.txt").write_text("no images here")
        url = str(tmp_path / "src")
    else:
        url = f"s3://{request.getfixturevalue('bucket')}/nothing/here"
    with pytest.raises(EmptySourceError, match=f"no images found at {url}"):
        write_plan(ImageFiles(url), Folder(str(tmp_path / "dst")), "00001", shard_size=4)
    assert read_plan(Folder(str(tmp_path / "dst")), "00001") is None


def test_shard_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="shard_size"):
        write_plan(ImageFiles(str(tmp_path)), Folder(str(tmp_path / "dst")), "00001", shard_size=0)


@pytest.mark.parametrize("kind", ["manifest", "parquet"])
def test_a_plan_of_signed_urls_holds_no_credential_yet_fetches_every_image(kind, bucket,
                                                                          s3_endpoint, tmp_path):
    store = Store(f"s3://{bucket}")
    for i in range(5):
        store.put(f"imgs/{i}.png", png(i))
    uris = [*(signed_url(s3_endpoint, bucket, f"imgs/{i}.png", v4=i % 2 == 0) for i in range(4)),
            store.url("imgs/4.png")]
    if kind == "manifest":
        url = store.put("lists/signed.txt", "\n".join(uris).encode())
    else:
        url = store.put("lists/signed.parquet",
                        parquet_bytes(pa.table({"uri": uris}), row_group_size=2))
    dst = Folder(f"s3://{bucket}/out")

    plan = write_plan(open_source(url, **LOOPBACK_URIS), dst, "00001", shard_size=2)

    files = plan_files(dst)
    assert plan.num_images == 5 and len(files) == 4  # three shards, then plan.json
    text = "\n".join(data.decode() for data in files.values())
    assert not sorted(s for s in secrets_of(*uris) if s in text)
    assert text.count("Signature=<redacted>") == 4
    shards = [load_shard(dst, "00001", sid) for sid in plan.shard_ids()]
    refs = [ref for shard in shards for ref in shard.images]
    assert all(ref.locator and ref.uri == redact_uri(uri)
               for ref, uri in zip(refs[:4], uris[:4], strict=True))
    assert refs[4].to_json() == {"id": image_id(uris[4]), "uri": uris[4]}  # as it always was
    # Each shard fetched on its own by a source that went through pickling, as on a worker.
    worker = pickle.loads(pickle.dumps(open_source(url, **LOOPBACK_URIS)))
    assert [data for shard in shards for _, data in worker.fetch(shard.images)] == [
        png(i) for i in range(5)]

    again = Folder(str(tmp_path / "again"))
    write_plan(open_source(url, **LOOPBACK_URIS), again, "00001", shard_size=2)
    assert plan_files(again) == files


def test_a_file_name_shaped_like_a_credential_is_withheld_and_becomes_an_errors_row(tmp_path):
    """An image folder cannot re-read a stripped name, and the plan must not store a
    credential: the image is planned withheld and read as an errors row naming it, while
    the job goes on with the others."""
    images = write_images(tmp_path / "src", 3)
    images[1].rename(tmp_path / "src" / "img-001&sig=abc.png")
    dst = Folder(str(tmp_path / "dst"))
    source = ImageFiles(str(tmp_path / "src"))
    plan = write_plan(source, dst, "00001", shard_size=4)
    assert "sig=abc" not in "".join(p.read_text() for p in (tmp_path / "dst").rglob("*.json"))
    [shard] = [load_shard(dst, "00001", sid) for sid in plan.shard_ids()]
    out = list(prefetch_decoded(source, shard, read_threads=2, max_pixels=10**8, depth=2))
    assert [type(o).__name__ for o in out] == ["DecodedImage", "ImageFailure", "DecodedImage"]
    failure = out[1]
    assert failure.ref.locator == WITHHELD and failure.stage == "read"
    assert "img-001&sig=<redacted>" in failure.message and "rename it" in failure.message


def test_a_path_that_happens_to_hold_the_access_key_id_plans_as_is(tmp_path, monkeypatch):
    """What is redacted from logs because it equals this process's key id is not a credential
    by its shape: the plan (whose URIs workers with other credentials must agree on) keeps it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "bench")
    write_images(tmp_path / "bench" / "images", 2)
    dst = Folder(str(tmp_path / "dst"))
    plan = write_plan(ImageFiles(str(tmp_path / "bench" / "images")), dst, "00001", shard_size=4)
    [shard] = [load_shard(dst, "00001", sid) for sid in plan.shard_ids()]
    assert all("/bench/images/" in ref.uri and ref.locator is None for ref in shard.images)


# --- each image once ------------------------------------------------------------------------

@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "lake"))
    return Store(f"s3://{request.getfixturevalue('bucket')}/lake")


def planned_refs(dst: Folder, plan: Plan) -> list[ImageRef]:
    return [ref for sid in plan.shard_ids() for ref in load_shard(dst, plan.run_id, sid).images]


def overlapping(store: Store, kind: str) -> tuple[str, int]:
    """A SRC that names some images twice, for each kind of source, and how many it names."""
    if kind == "images":
        for key in ("raw/a.png", "raw/b.png", "raw/x/c.png"):
            store.put(key, png(1))
        return f"{store.url('raw')}::{store.url('raw/x')}", 3  # raw/x/c.png twice
    if kind == "globs":
        for key in ("raw/a1.png", "raw/a2.png", "raw/b1.png"):
            store.put(key, png(2))
        return f"{store.url('raw/a*.png')}::{store.url('raw/*1.png')}", 3  # a1 in both
    if kind == "webdataset":
        url = store.put("w.tar", tar_bytes(wds_shard(0)))
        return f"{url}::{url}", 3
    if kind == "parquet":
        url = store.put("t.parquet", parquet_bytes(image_table(3)))
        return f"{url}::{url}", 3
    store.put("imgs/a.png", png(3))
    return store.put("m.txt", b"imgs/a.png\nimgs/b.png\nimgs/a.png\n"), 2


@pytest.mark.parametrize("kind", ["images", "globs", "webdataset", "parquet", "manifest"])
def test_overlapping_sources_plan_each_image_once(kind, store: Store):
    url, unique = overlapping(store, kind)
    source = open_source(url)
    listed = list(source.list_images())
    assert len(listed) > unique  # the source does name some twice
    dst = Folder(store.url("dst"))

    plan = write_plan(source, dst, "00001", shard_size=2)

    refs = planned_refs(dst, plan)
    assert len({r.image_id for r in refs}) == len(refs) == plan.num_images == unique
    assert [r.image_id for r in refs] == list(dict.fromkeys(r.image_id for r in listed))
    assert plan.skipped.get("repeat") == len(listed) - unique
    assert read_plan(dst, "00001") == plan
    assert dst.read_json(layout.plan_done("00001"))["skipped"]["repeat"] == len(listed) - unique


def test_seen_ids_holds_every_id_once_across_merges():
    rng = np.random.default_rng(4)
    ids = [int(i) for i in rng.integers(1, 2**63 - 1, 5000, dtype=np.int64)]
    seen = SeenIds(min_pending=16)  # merging after every few ids
    assert all(seen.add(i) for i in ids)
    assert len(seen) == len(ids)
    repeats = [ids[int(k)] for k in rng.integers(0, len(ids), 2000)]
    assert not any(seen.add(i) for i in repeats)
    assert len(seen) == len(ids)
    assert seen.add(2**63 - 1) and seen.add(1) and not seen.add(1)  # the extremes of the range


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_image_listed_twice_is_annotated_once(where, ray_cluster, tiny_model, tmp_path,
                                                 request):
    """`SRC::SRC` through a whole job: panoptic.json holds each image id once, and the images
    table each image once."""
    store = (Store(str(tmp_path)) if where == "local"
             else Store(f"s3://{request.getfixturevalue('bucket')}"))
    for i in range(3):
        store.put(f"src/img-{i}.png", png(i, size=24))
    src, dst = store.url("src"), store.url("dst")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["annotate", f"{src}::{src}", dst, "--model", tiny_model, "--shard-size", "2",
                   "--num-workers", "1", "--no-progress"])
    assert rc == 0
    out = Folder(dst)
    ids = [image["id"] for image in read_panoptic(out)["images"]]
    assert len(ids) == len(set(ids)) == 3
    assert len(read_table(out, "images")) == 3
    summary = out.read_json(layout.summary("00001"))
    assert summary["skipped"] == {"repeat": 3} and summary["planned_images"] == 3
    assert "skipped:       3 keys: 3 an image listed again" in stdout.getvalue()


# --- what a listing skips --------------------------------------------------------------------

def test_the_plan_counts_what_it_skipped(store: Store):
    write_images_to(store, 2)
    store.put("src/notes.txt", b"not an image")
    store.put("src/sub/labels.json", b"{}")
    if "://" not in store.root:
        os.mkfifo(f"{store.url('src')}/pipe.png")  # only a local folder can hold one
        os.symlink(f"{store.url('src')}/gone.png", f"{store.url('src')}/dangling.png")
    dst = Folder(store.url("dst"))

    plan = write_plan(ImageFiles(store.url("src")), dst, "00001", shard_size=4)

    local = "://" not in store.root
    expected = {"extension": 2, **({"not_regular_file": 2} if local else {})}
    assert plan.num_images == 2 and plan.skipped == expected
    assert read_plan(dst, "00001") == plan
    assert json.loads(dst.read_bytes(layout.plan_done("00001")))["skipped"] == expected


def test_an_empty_source_says_what_it_skipped(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("no images")
    with pytest.raises(EmptySourceError, match="skipped 1 key: 1 not an image extension"):
        write_plan(ImageFiles(str(tmp_path / "src")), Folder(str(tmp_path / "dst")), "00001",
                   shard_size=4)


def write_images_to(store: Store, count: int) -> None:
    for i in range(count):
        store.put(f"src/img-{i}.png", png(i))
