"""Which committed images an export writes, and in what order: the one selection every
export format shares (`segpipe export --order ... --limit N`).

    committed  the destination's committed order (run, shard, row)
    priority   highest review priority first (images without one last), ties in committed
               order; with `limit`, the N images that most need a reviewer

Ordering by priority reads the images table once to rank, then each pass reads only the
shards that hold a selected image and keeps the selected images until the pass has them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice

from segpipe.destination.reader import AnnotatedImage, Shards, iter_images
from segpipe.io.storage import Folder

ORDERS = ("committed", "priority")

ImageKey = tuple[str, str, int]  # run, shard, image id
Images = Callable[..., Iterator[AnnotatedImage]]


def check_selection(order: str, limit: int | None) -> None:
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be at least 1, not {limit!r}")


def select_images(folder: Folder, shards: Shards, *, order: str = "committed",
                  limit: int | None = None, min_score: float | None = None) -> Images:
    """`images(segments=True)`: an iterator of the selected images, the same ones in the same
    order on every call (export formats read their images more than once)."""
    check_selection(order, limit)

    def read(segments: bool, among: Shards = shards) -> Iterator[AnnotatedImage]:
        return iter_images(folder, shards=among, segments=segments, min_score=min_score)

    if order == "committed":
        return lambda segments=True: islice(read(segments), limit)
    ranked = rank_by_priority(read(False), limit)
    needed = [s for s in shards if s in {(run, sid) for run, sid, _ in ranked}]

    def by_priority(segments: bool = True) -> Iterator[AnnotatedImage]:
        wanted = set(ranked)
        found = {_key(image): image for image in read(segments, needed) if _key(image) in wanted}
        return (found[key] for key in ranked)

    return by_priority


def rank_by_priority(images: Iterator[AnnotatedImage], limit: int | None) -> list[ImageKey]:
    """The images' keys, highest review priority first; those without one last; ties in
    the order given."""
    keyed = [(-(image.review_priority if image.review_priority is not None else -1.0), n,
              _key(image)) for n, image in enumerate(images)]
    keyed.sort()
    return [key for _, _, key in keyed[:limit]]


def _key(image: AnnotatedImage) -> ImageKey:
    return image.run_id, image.shard_id, image.image_id
