"""The shard pipeline's own parts: overlapped stages, parallel writes, worker busy time."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from segpipe.app.annotate import busy_seconds
from segpipe.core.records import RunContext, Shard
from segpipe.io.storage import Folder, ParallelWrites
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.shard import process_shard
from segpipe.sources import open_source
from tests.support.images import write_images


def test_busy_time_counts_overlapping_shards_of_a_worker_once():
    markers = [
        {"pid": 1, "started_at": 0.0, "finished_at": 10.0},
        {"pid": 1, "started_at": 8.0, "finished_at": 15.0},  # read ahead while 0-10 ran
        {"pid": 1, "started_at": 20.0, "finished_at": 21.0},
        {"pid": 2, "started_at": 0.0, "finished_at": 4.0},  # another worker counts apart
        {"shard_id": "from an earlier session, no timings"},
    ]
    assert busy_seconds(markers) == pytest.approx(15.0 + 1.0 + 4.0)


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


def _run_shard(src: Path, dst: Path, segmenter: Segmenter, batch_size: int) -> dict:
    source = open_source(str(src))
    refs = tuple(source.list_images())
    run = RunContext("00001", datetime(2026, 1, 1, tzinfo=timezone.utc), "tiny", None, "panoptic")
    return process_shard(Shard("s0", "00001", refs), source=source, segmenter=segmenter,
                         dst=Folder(str(dst)), run=run, batch_size=batch_size, read_threads=3)


def test_overlapped_stages_write_the_same_bytes_every_time(tmp_path, tiny_model):
    """Post-processing and writing run on their own thread beside the next forward, and a bad
    image's row is written as soon as it is read: the shard's files must still be equal bytes
    on every run, and count every image once."""
    src = tmp_path / "src"
    write_images(src, 9, seed=3)
    (src / "broken.png").write_bytes(b"not an image")
    segmenter = Segmenter(tiny_model)
    first = _run_shard(src, tmp_path / "a", segmenter, batch_size=4)
    second = _run_shard(src, tmp_path / "b", segmenter, batch_size=4)
    assert (first["images"], first["annotated"], first["errors"]) == (10, 9, 1)
    assert (second["segments"], second["errors"]) == (first["segments"], first["errors"])
    assert 0 < first["forward_s"] <= first["finished_at"] - first["started_at"]

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert sum(k.startswith("panoptic/") for k in a) == 9
    assert a == b
