"""The shard plan: deterministic, streamed, and clear about an empty source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from segpipe import layout
from segpipe.identity import image_id, shard_id
from segpipe.plan import EmptySourceError, Plan, load_shard, read_plan, write_plan
from segpipe.records import ImageRef
from segpipe.sources import ImageFiles
from segpipe.storage import Folder
from tests.conftest import write_images


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
