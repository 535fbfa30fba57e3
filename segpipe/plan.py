"""The shard plan: a deterministic split of a source's listing into shards.

The listing is streamed and each shard is written as soon as it is full, so the
driver holds one shard at a time whatever the size of the source. `plan.json`,
written last, says the plan is complete; an interrupted plan is simply redone,
and being deterministic it rewrites the same bytes.

The plan lives under DST, which must never hold a credential: sources list a signed URI
redacted, with a locator to re-read it when fetching (see `sources.located`); any other
name with a credential's shape is planned stripped and withheld, and becomes an errors row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from segpipe import layout
from segpipe.identity import shard_id
from segpipe.records import ImageRef, Shard
from segpipe.sources import EmptySourceError, Source
from segpipe.sources.located import storable
from segpipe.storage import Folder, redact

__all__ = ["EmptySourceError", "Plan", "load_shard", "read_plan", "write_plan"]


@dataclass(frozen=True)
class Plan:
    run_id: str
    num_shards: int
    num_images: int

    def shard_ids(self) -> Iterator[str]:
        return (shard_id(self.run_id, i) for i in range(self.num_shards))


def write_plan(source: Source, dst: Folder, run_id: str, shard_size: int,
               skip: Callable[[ImageRef], bool] | None = None) -> Plan:
    """Stream the source into shards of `shard_size` images, skipping what `skip` says.

    The order and the shard boundaries follow the source's listing order only, so the
    same source and `shard_size` give the same shards, byte for byte.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    index = 0
    num_images = 0
    seen_any = False
    batch: list[ImageRef] = []

    def flush() -> None:
        nonlocal index
        sid = shard_id(run_id, index)
        dst.write_json(layout.plan_shard(run_id, sid),
                       {"shard_id": sid, "images": [ref.to_json() for ref in batch]})
        index += 1
        batch.clear()

    for ref in source.list_images():
        seen_any = True
        if skip is not None and skip(ref):
            continue
        batch.append(storable(ref))
        num_images += 1
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    if not seen_any:
        raise EmptySourceError(f"no images found at {redact(source.url)}: check the URL, "
                               "and --source-format if it is not a folder of image files")
    plan = Plan(run_id, index, num_images)
    dst.write_json(layout.plan_done(run_id),
                   {"run_id": run_id, "num_shards": plan.num_shards, "num_images": num_images})
    return plan


def read_plan(dst: Folder, run_id: str) -> Plan | None:
    """The completed plan of a run, or None when planning never finished."""
    if not dst.exists(layout.plan_done(run_id)):
        return None
    done = dst.read_json(layout.plan_done(run_id))
    return Plan(run_id, int(done["num_shards"]), int(done["num_images"]))


def load_shard(dst: Folder, run_id: str, sid: str) -> Shard:
    obj = dst.read_json(layout.plan_shard(run_id, sid))
    return Shard(sid, run_id, tuple(ImageRef.from_json(o) for o in obj["images"]))
