"""Deterministic identity: image ids from source URIs, output keys from ids.

Output keys never contain raw source paths, so a hostile key in the source can
never choose where an output lands.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable

import numpy as np

_MASK_63 = (1 << 63) - 1


def image_id(uri: str, member: str | None = None) -> int:
    """A stable 63-bit positive id for an image: the URI, plus the member key for
    images inside a container (a tar member, a Parquet row)."""
    text = uri if member is None else f"{uri}\x00{member}"
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & _MASK_63) or 1


def shard_id(run_id: str, index: int) -> str:
    return f"{run_id}-{index:06d}"


def image_png_key(image: int) -> str:
    """Key of an image's PNG (panoptic or semantic) within its run's folder."""
    return f"{image:016x}.png"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def duplicate_ids(ids: Iterable[int]) -> set[int]:
    """The ids that occur more than once; 8 bytes per id while counting, not a Python set."""
    packed = array("q", ids)
    if not packed:
        return set()
    ordered = np.sort(np.frombuffer(packed, dtype=np.int64))
    return set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
