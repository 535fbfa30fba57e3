"""The items that flow through the pipeline, planned refs to commit markers, with provenance
carried to the end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One planned image: where it is and who it is. This is what a plan stores."""

    image_id: int
    uri: str
    member: str | None = None  # tar member key, or Parquet row, inside `uri`
    version: str | None = None  # content identity from the listing (ETag, size+mtime)
    fields: dict[str, Any] | None = None  # extra source columns carried to the images table
    # Set when `uri` is the redacted form of a signed URI: where the source lists the real
    # one (see `sources.redacted`), since the plan under DST must never hold credentials.
    locator: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.image_id, "uri": self.uri}
        if self.member is not None:
            out["member"] = self.member
        if self.version is not None:
            out["version"] = self.version
        if self.fields:
            out["fields"] = self.fields
        if self.locator is not None:
            out["at"] = self.locator
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageRef:
        return cls(obj["id"], obj["uri"], obj.get("member"), obj.get("version"), obj.get("fields"),
                   obj.get("at"))

    @property
    def display(self) -> str:
        """How errors and tables name this image."""
        return self.uri if self.member is None else f"{self.uri}#{self.member}"


@dataclass(frozen=True, slots=True)
class Shard:
    """One unit of work, retry and commit."""

    shard_id: str
    run_id: str
    images: tuple[ImageRef, ...]


@dataclass(slots=True)
class DecodedImage:
    """An image in flight: its ref, its RGB pixels (H, W, 3 uint8) and what decode learned."""

    ref: ImageRef
    pixels: np.ndarray
    content_hash: str
    # (H, W) of the image itself when `pixels` are a reduced-size JPEG draft (--jpeg-draft);
    # the outputs are always at this size.
    stored_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image, which its outputs take."""
        if self.stored_size is not None:
            return self.stored_size
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True, slots=True)
class ImageFailure:
    """A per-image failure; it becomes one row of the errors table."""

    ref: ImageRef
    stage: str  # read | decode | inference
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of one image's result. `segment_id` is the value in the id map."""

    segment_id: int
    label_id: int  # the model's label index
    score: float | None  # None for semantic segments: a class has no query score
    was_fused: bool = False


@dataclass(slots=True)
class Prediction:
    """What the model stage hands to the writer: a compact id map and its segments."""

    image: DecodedImage
    id_map: np.ndarray  # (H, W) int32, 0 = void, segment ids 1..N
    segments: list[Segment] = field(default_factory=list)
    review_priority: float | None = None  # in [0, 1], higher: review first (model.postprocess.priority)


@dataclass(frozen=True)
class RunContext:
    """What every row of a run shares. `created_at` is the run's start, so a resumed
    run writes the same bytes as an uninterrupted one."""

    run_id: str
    created_at: datetime
    model: str
    revision: str | None
    task: str


@dataclass(frozen=True, slots=True)
class CommitMarker:
    """What a shard's commit marker stores: its counts. Written last, it says the shard is
    committed; its bytes depend on nothing but the shard's outputs."""

    shard_id: str
    run_id: str
    images: int
    annotated: int
    errors: int
    segments: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CommitMarker:
        return cls(obj["shard_id"], obj["run_id"], obj["images"], obj["annotated"],
                   obj["errors"], obj["segments"])


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What processing a shard returns to the driver: its stored marker, and how the work
    went (never stored in the marker, which must not change when a shard is retried)."""

    marker: CommitMarker
    started_at: float  # wall-clock times of the shard's start and end
    finished_at: float
    # The worker's monotonic clock at the same two moments: what busy time is measured on,
    # since the wall clock of a VM can step by seconds while a shard runs.
    span: tuple[float, float] = (0.0, 0.0)
    forward_s: float = 0.0  # time in the model's forward
    batch_seconds: tuple[float, ...] = ()  # each batch's preprocessing and forward
    pid: int | None = None  # the worker process, set by the worker
    peak_rss_mb: float = 0.0  # the worker's peak memory, set by the worker
