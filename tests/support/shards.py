"""One shard of a folder's images through `process_shard`, as a worker runs it, in this process."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from segpipe.core.items import RunContext, Shard, ShardResult
from segpipe.io.storage import Folder
from segpipe.model.segmenter import Segmenter
from segpipe.pipeline.shard import process_shard
from segpipe.sources import open_source


def run_shard(src: Path, dst: Path, segmenter: Segmenter, *, batch_size: int,
              cpu_threads: int = 1, jpeg_draft: bool = False) -> ShardResult:
    """Every image of `src` as shard s0 of run 00001, committed at `dst`."""
    source = open_source(str(src))
    refs = tuple(source.list_images())
    run = RunContext("00001", datetime(2026, 1, 1, tzinfo=timezone.utc), "tiny", None, "panoptic")
    return process_shard(Shard("s0", "00001", refs), source=source, segmenter=segmenter,
                         dst=Folder(str(dst)), run=run, batch_size=batch_size, read_threads=3,
                         cpu_threads=cpu_threads, jpeg_draft=jpeg_draft)
