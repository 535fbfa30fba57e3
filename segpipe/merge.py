"""The merged COCO-panoptic file, streamed from committed shards' fragments.

Memory is bounded by one fragment, not by the number of images: the JSON is
written piece by piece, images first, then annotations. The file is replaced only
once it is complete, so an interrupted merge leaves the previous one in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from segpipe import layout
from segpipe.storage import Folder


def committed_shards(dst: Folder) -> Iterator[tuple[str, str]]:
    """(run id, shard id) of every committed shard, in run then shard order."""
    for key in dst.list(f"{layout.META}/runs"):
        parts = key.split("/")
        if len(parts) == 5 and parts[3] == "commits" and parts[4].endswith(".json"):
            yield parts[2], parts[4][: -len(".json")]


def write_merged_panoptic(dst: Folder, *, info: dict[str, Any] | None = None) -> int:
    """Write DST/panoptic.json; returns the number of images in it. An image annotated
    again by a later run (new content) appears once, from the latest run."""
    from segpipe.incremental import is_replaced, replaced_by_later_runs

    shards = list(committed_shards(dst))
    replaced = replaced_by_later_runs(dst, shards)
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
                    if is_replaced(replaced, run_id, image):
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
