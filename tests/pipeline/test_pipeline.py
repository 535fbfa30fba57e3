"""The shard pipeline's own parts: overlapped stages, parallel writes, worker busy time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from segpipe.app.annotate import busy_seconds
from segpipe.core.items import CommitMarker, ShardResult
from segpipe.io.storage import Folder, ParallelWrites
from segpipe.model.segmenter import Segmenter
from tests.support.images import write_images
from tests.support.shards import run_shard


def test_busy_time_counts_overlapping_shards_of_a_worker_once():
    marker = CommitMarker("s", "00001", images=1, annotated=1, errors=0, segments=1)
    results = [
        ShardResult(marker, 0.0, 10.0, span=(0.0, 10.0), pid=1),
        ShardResult(marker, 8.0, 15.0, span=(8.0, 15.0), pid=1),  # read ahead while 0-10 ran
        ShardResult(marker, 20.0, 21.0, span=(20.0, 21.0), pid=1),
        ShardResult(marker, 0.0, 4.0, span=(0.0, 4.0), pid=2),  # another worker counts apart
    ]
    assert busy_seconds(results) == pytest.approx(15.0 + 1.0 + 4.0)


def test_busy_time_is_measured_on_the_monotonic_clock_not_the_wall_clock():
    # The wall clock stepped 22 s forward during the second shard (a VM's clock sync).
    marker = CommitMarker("s", "00001", images=1, annotated=1, errors=0, segments=1)
    results = [ShardResult(marker, 100.0, 110.0, span=(5.0, 15.0), pid=1),
               ShardResult(marker, 110.0, 142.0, span=(15.0, 25.0), pid=1)]
    assert busy_seconds(results) == pytest.approx(20.0)


def test_parallel_writes_land_and_a_failed_write_is_raised(tmp_path):
    folder = Folder(str(tmp_path))
    with ParallelWrites(folder, threads=3) as writes:
        for i in range(20):
            writes.put(f"a/{i}.bin", bytes([i]) * 100)
        writes.wait()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(f"{i}.bin" for i in range(20))
    assert (tmp_path / "a" / "7.bin").read_bytes() == bytes([7]) * 100

    (tmp_path / "blocked").write_bytes(b"a file where a folder is wanted")
    with ParallelWrites(folder, threads=2) as writes:
        writes.put("ok.bin", b"fine")
        writes.put("blocked/x.bin", b"cannot land")
        with pytest.raises(OSError):
            writes.wait()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_overlapped_stages_write_the_same_bytes_every_time(tmp_path, tiny_model):
    """Post-processing and writing run on their own thread beside the next forward, and a bad
    image's row is written as soon as it is read: the shard's files must still be equal bytes
    on every run, and count every image once."""
    src = tmp_path / "src"
    write_images(src, 9, seed=3)
    (src / "broken.png").write_bytes(b"not an image")
    segmenter = Segmenter(tiny_model)
    first = run_shard(src, tmp_path / "a", segmenter, batch_size=4)
    second = run_shard(src, tmp_path / "b", segmenter, batch_size=4)
    assert (first.marker.images, first.marker.annotated, first.marker.errors) == (10, 9, 1)
    assert second.marker == first.marker
    assert 0 < first.forward_s <= first.finished_at - first.started_at
    assert len(first.batch_seconds) == 3  # 9 decoded images in batches of 4

    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sum(k.startswith("panoptic/") for k in a) == 9
    assert a == b


def test_the_stored_marker_holds_the_counts_alone_and_the_result_adds_timings(tmp_path, tiny_model):
    """The driver gets the shard's timings with its result, while the marker stored at DST
    keeps its exact bytes: the counts, nothing that differs between two runs of the shard."""
    src = tmp_path / "src"
    write_images(src, 3, seed=4)
    before = time.monotonic()
    result = run_shard(src, tmp_path / "dst", Segmenter(tiny_model), batch_size=2)
    stored = (tmp_path / "dst" / "_segpipe/runs/00001/commits/s0.json").read_bytes()
    assert stored == (b'{"annotated":3,"errors":0,"images":3,"run_id":"00001","segments":'
                      + str(result.marker.segments).encode() + b',"shard_id":"s0"}')
    assert CommitMarker.from_json(json.loads(stored)) == result.marker
    assert result.started_at < result.finished_at and len(result.batch_seconds) == 2
    assert before <= result.span[0] < result.span[1] <= time.monotonic()  # busy time's clock


def test_decode_and_finishing_on_several_threads_write_the_bytes_of_one(tmp_path, tiny_model):
    """With --cpus-per-worker 3, three threads decode and three post-process and encode, and
    batches finish out of order: the rows must still be added in plan order, so the shard's
    files are the bytes a single thread writes, bad image's row included."""
    src = tmp_path / "src"
    write_images(src, 11, seed=5)
    (src / "0-broken.png").write_bytes(b"not an image")
    segmenter = Segmenter(tiny_model)
    one = run_shard(src, tmp_path / "one", segmenter, batch_size=2)
    three = run_shard(src, tmp_path / "three", segmenter, batch_size=2, cpu_threads=3)
    assert (three.marker.images, three.marker.annotated, three.marker.errors) == (12, 11, 1)
    assert three.marker == one.marker
    a, b = _files(tmp_path / "one"), _files(tmp_path / "three")
    assert sum(k.startswith("panoptic/") for k in b) == 11
    assert a == b
