"""The merged COCO-panoptic file, streamed from committed shards' fragments.

Memory is bounded by one fragment, not by the number of images: the JSON is
written piece by piece, images first, then annotations. The file is replaced only
once it is complete, so an interrupted merge leaves the previous one in place.
"""

from __future__ import annotations

import json
from typing import IO, Any

from segpipe.destination import layout
from segpipe.destination.committed import Shards, committed_shards
from segpipe.destination.incremental import is_superseded, superseded_by_later_runs
from segpipe.io.storage import Folder


def write_merged_panoptic(dst: Folder, *, info: dict[str, Any] | None = None,
                          shards: Shards | None = None) -> int:
    """Write DST/panoptic.json; returns the number of images in it. An image annotated
    again by a later run (new content) appears once, from the latest run. `shards`: the
    committed shards, when the caller has listed them already."""
    shards = committed_shards(dst) if shards is None else list(shards)
    superseded = superseded_by_later_runs(dst, shards)
    categories: list[dict[str, Any]] = []
    if shards:
        categories = dst.read_json(layout.fragment(*shards[0]))["categories"]
    count = 0
    with dst.open_atomic(layout.MERGED_PANOPTIC) as out:
        out.write('{"info":' + json.dumps(info or {"description": "segpipe pre-labels"}))
        out.write(',"categories":' + json.dumps(categories))
        for section in ("images", "annotations"):
            out.write(f',"{section}":[')
            first = True
            for run_id, sid in shards:
                for entry in dst.read_json(layout.fragment(run_id, sid))[section]:
                    image = entry["id"] if section == "images" else entry["image_id"]
                    if is_superseded(superseded, run_id, image):
                        continue
                    first = _write_item(out, entry, first)
                    count += section == "images"
            out.write("]")
        out.write("}")
    return count


def _write_item(out: IO[str], entry: dict[str, Any], first: bool) -> bool:
    if not first:
        out.write(",")
    out.write(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    return False
