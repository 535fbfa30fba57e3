"""The shard plan: a deterministic split of a source's listing into shards.

The listing is streamed and each shard is written as soon as it is full, so the
driver holds one shard at a time whatever the size of the source. `plan.json`,
written last, says the plan is complete; an interrupted plan is simply redone,
and being deterministic it rewrites the same bytes.

An image is planned once, however many times the source lists it (`SRC::SRC`, globs that
overlap, a manifest naming it twice): the first listing counts, and later ones are counted
as repeats. The ids seen so far cost about 16 bytes each (see `SeenIds`). What the
listing skipped, by reason, is recorded in `plan.json` with the counts of the plan.

The plan lives under DST, which must never hold a credential: sources list a signed URI
redacted, with a locator to re-read it when fetching (see `sources.redacted`); any other
name with a credential's shape is planned stripped and withheld, and becomes an errors row.
"""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from segpipe.core.identity import shard_id
from segpipe.core.items import ImageRef, Shard
from segpipe.destination import layout
from segpipe.io.storage import Folder, redact
from segpipe.sources import EmptySourceError, Source
from segpipe.sources.base import SKIP_INSIDE_DST, SKIP_REPEAT, SKIP_SEEN, Skipped, describe_skipped
from segpipe.sources.redacted import storable

__all__ = ["EmptySourceError", "Plan", "SeenIds", "load_shard", "read_plan", "write_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    run_id: str
    num_shards: int
    num_images: int
    skipped: dict[str, int] = field(default_factory=dict)  # listed keys not planned, by reason

    def shard_ids(self) -> Iterator[str]:
        return (shard_id(self.run_id, i) for i in range(self.num_shards))


class SeenIds:
    """A set of image ids for listings of many millions: 8 bytes an id in sorted arrays,
    plus the few waiting to be merged; about 16 bytes an id of memory in all (1M ids: 16 MB).

    Ids are hashes, so their top bits spread them evenly over 2**BUCKET_BITS sorted arrays
    (`array`, which `bisect` searches in C). New ids wait in a Python set until it holds a
    share of all ids, then are merged in bucket by bucket: a merge copies one bucket at a
    time, and each id is copied a bounded number of times overall.
    """

    BUCKET_BITS = 8
    MIN_PENDING = 2**14
    PENDING_SHARE = 32  # pending ids are at most 1/32 of those merged, beyond the minimum

    def __init__(self, *, min_pending: int = MIN_PENDING) -> None:
        self._min_pending = min_pending
        self._shift = 63 - self.BUCKET_BITS
        self._buckets = [array("q") for _ in range(2**self.BUCKET_BITS)]
        self._pending: set[int] = set()
        self._merged = 0
        self._merge_at = min_pending  # pending ids that start a merge

    def __len__(self) -> int:
        return self._merged + len(self._pending)

    def add(self, image_id: int) -> bool:
        """Hold `image_id`; False when it was held already."""
        if image_id in self._pending:
            return False
        bucket = self._buckets[image_id >> self._shift]
        at = bisect_left(bucket, image_id)
        if at < len(bucket) and bucket[at] == image_id:
            return False
        self._pending.add(image_id)
        if len(self._pending) >= self._merge_at:
            self._merge()
        return True

    def _merge(self) -> None:
        new = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        new.sort()
        edges = np.searchsorted(new >> self._shift, np.arange(len(self._buckets) + 1))
        for index, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            if hi > lo:
                old = np.frombuffer(self._buckets[index], dtype=np.int64)
                part = new[lo:hi]
                merged = array("q")
                merged.frombytes(np.insert(old, old.searchsorted(part), part).tobytes())
                self._buckets[index] = merged
        self._merged += len(new)
        self._pending.clear()
        self._merge_at = max(self._min_pending, self._merged // self.PENDING_SHARE)


def write_plan(source: Source, dst: Folder, run_id: str, shard_size: int,
               skip: Callable[[ImageRef], bool] | None = None) -> Plan:
    """Stream the source into shards of `shard_size` images, each image once, skipping
    what `skip` says.

    The order and the shard boundaries follow the source's listing order only, so the
    same source and `shard_size` give the same shards, byte for byte.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    index = 0
    num_images = 0
    seen_any = False
    seen = SeenIds()
    skipped = Skipped()
    batch: list[ImageRef] = []

    def flush() -> None:
        nonlocal index
        sid = shard_id(run_id, index)
        dst.write_json(layout.plan_shard(run_id, sid),
                       {"shard_id": sid, "images": [ref.to_json() for ref in batch]})
        index += 1
        batch.clear()

    inside_dst = _under(dst)
    for ref in source.list_images(skipped=skipped):
        seen_any = True
        if not seen.add(ref.image_id):
            skipped[SKIP_REPEAT] += 1
            continue
        if inside_dst(ref.uri):
            skipped[SKIP_INSIDE_DST] += 1
            continue
        if skip is not None and skip(ref):
            skipped[SKIP_SEEN] += 1
            continue
        batch.append(storable(ref))
        num_images += 1
        if len(batch) == shard_size:
            flush()
    if batch:
        flush()
    counts = dict(sorted((reason, n) for reason, n in skipped.items() if n))
    if not seen_any:
        found = f" (skipped {describe_skipped(counts)})" if counts else ""
        raise EmptySourceError(f"no images found at {redact(source.url)}{found}: check the URL, "
                               "and --source-format if it is not a folder of image files")
    if counts:
        log.info("%s: skipped %s", redact(source.url), describe_skipped(counts))
    plan = Plan(run_id, index, num_images, counts)
    dst.write_json(layout.plan_done(run_id),
                   {"run_id": run_id, "num_shards": plan.num_shards, "num_images": num_images,
                    "skipped": counts})
    return plan


def _under(dst: Folder) -> Callable[[str], bool]:
    """Whether a source URI names a file under `dst`.

    A destination inside its source (`SRC s3://lake/`, `DST s3://lake/prelabels/`) is
    allowed, and its files are never planned: otherwise an incremental run would annotate
    the PNGs of the run before. Excluding them, rather than refusing such a DST, keeps a
    layout that data lakes often have, and a glob that cannot match them costs nothing.
    """
    root = dst.root.rstrip("/") + "/"
    protocol = None if dst.is_local else dst.url.split("://", 1)[0]

    def inside(uri: str) -> bool:
        scheme, _, path = uri.partition("://") if "://" in uri else (None, "", uri)
        if (scheme in (None, "file", "local")) != dst.is_local:
            return False
        return (dst.is_local or scheme == protocol) and path.startswith(root)

    return inside


def read_plan(dst: Folder, run_id: str) -> Plan | None:
    """The completed plan of a run, or None when planning never finished."""
    if not dst.exists(layout.plan_done(run_id)):
        return None
    done = dst.read_json(layout.plan_done(run_id))
    skipped = {str(k): int(v) for k, v in (done.get("skipped") or {}).items()}
    return Plan(run_id, int(done["num_shards"]), int(done["num_images"]), skipped)


def load_shard(dst: Folder, run_id: str, sid: str) -> Shard:
    obj = dst.read_json(layout.plan_shard(run_id, sid))
    return Shard(sid, run_id, tuple(ImageRef.from_json(o) for o in obj["images"]))
