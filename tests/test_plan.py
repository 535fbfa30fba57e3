"""The shard plan: deterministic, streamed, and clear about an empty source."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pytest

from segpipe import layout
from segpipe.identity import image_id, shard_id
from segpipe.pipeline import prefetch_decoded
from segpipe.plan import EmptySourceError, Plan, load_shard, read_plan, write_plan
from segpipe.records import ImageRef
from segpipe.sources import ImageFiles, open_source
from segpipe.sources.located import WITHHELD
from segpipe.storage import Folder, redact_uri
from tests.conftest import write_images
from tests.test_sources import Store, parquet_bytes, png, secrets_of, signed_url


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

    def list_images(self) -> Iterator[ImageRef]:
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

    plan = write_plan(open_source(url), dst, "00001", shard_size=2)

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
    worker = pickle.loads(pickle.dumps(open_source(url)))
    assert [data for shard in shards for _, data in worker.fetch(shard.images)] == [
        png(i) for i in range(5)]

    again = Folder(str(tmp_path / "again"))
    write_plan(open_source(url), again, "00001", shard_size=2)
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
