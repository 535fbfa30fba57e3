"""The merged COCO-panoptic file, streamed from committed shards' fragments.

Memory is bounded by a few fragments, not by the number of images: the JSON is
written piece by piece, images first, then annotations. The file is replaced only
once it is complete, so an interrupted merge leaves the previous one in place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import IO, Any

from segpipe.core.concurrency import ordered_map
from segpipe.destination import layout
from segpipe.destination.committed import Shards, committed_shards
from segpipe.destination.incremental import is_superseded, superseded_by_later_runs
from segpipe.io.storage import Folder

# Fragments read at once. On an object store each read is a round trip: one at a time, a
# million images' 4,000 fragments would keep the job's end waiting for minutes.
FRAGMENT_READS = 16


def write_merged_panoptic(dst: Folder, *, info: dict[str, Any] | None = None,
                          shards: Shards | None = None, reads: int = FRAGMENT_READS) -> int:
    """Write DST/panoptic.json; returns the number of images in it. An image annotated
    again by a later run (new content) appears once, from the latest run. `shards`: the
    committed shards, when the caller has listed them already.

    Each fragment is read once, `reads` at a time in shard order: its images go straight
    to the file, its annotations to a local spool that follows them."""
    shards = committed_shards(dst) if shards is None else list(shards)
    superseded = superseded_by_later_runs(dst, shards)
    fragments = ordered_map(lambda shard: dst.read_json(layout.fragment(*shard)), shards,
                            threads=reads)
    images = annotations = 0
    with dst.open_atomic(layout.MERGED_PANOPTIC) as out, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        out.write('{"info":' + json.dumps(info or {"description": "segpipe pre-labels"}))
        for index, ((run_id, _), fragment) in enumerate(fragments):
            if index == 0:
                out.write(',"categories":' + json.dumps(fragment["categories"]) + ',"images":[')
            for entry in fragment["images"]:
                if not is_superseded(superseded, run_id, entry["id"]):
                    images = _write_item(out, entry, images)
            for entry in fragment["annotations"]:
                if not is_superseded(superseded, run_id, entry["image_id"]):
                    annotations = _write_item(spool, entry, annotations)
        if not shards:
            out.write(',"categories":[],"images":[')
        out.write('],"annotations":[')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        out.write("]}")
    return images


def _write_item(out: IO[str], entry: dict[str, Any], written: int) -> int:
    """Write `entry` as the next item of a JSON list holding `written` so far."""
    if written:
        out.write(",")
    out.write(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    return written + 1
