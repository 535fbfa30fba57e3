"""The one typed, frozen job config. CLI flags and YAML job specs both map onto it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

TASKS = ("panoptic", "instance", "semantic")
DTYPES = ("fp32", "bf16", "fp16")

# Fields that change what the outputs contain; a destination refuses a run that differs.
FINGERPRINT_FIELDS = (
    "model", "revision", "task", "label_map", "threshold", "mask_threshold",
    "overlap_mask_area_threshold", "source_format",
)


@dataclass(frozen=True)
class JobConfig:
    src: str
    dst: str
    model: str = "builtin:demo"
    revision: str | None = None
    task: str = "panoptic"
    dtype: str = "fp32"
    device: str | None = None  # default: cuda when the worker has a GPU, else cpu
    batch_size: int = 8
    shard_size: int = 256
    num_workers: int | None = None  # default: one per GPU, or a CPU default
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    max_attempts: int = 3
    max_error_rate: float = 1.0
    address: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    source_format: str | None = None
    image_column: str | None = None
    uri_column: str | None = None
    id_column: str | None = None
    label_map: str | None = None
    threshold: float | None = None
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.8
    allow_pickle_weights: bool = False
    max_image_pixels: int = 89_478_485  # Pillow's own default decompression-bomb limit
    read_threads: int = 8
    incremental: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name in ("batch_size", "shard_size", "max_attempts", "read_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError("--num-workers must be at least 1")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError("--max-error-rate must be between 0 and 1")

    def fingerprint(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FINGERPRINT_FIELDS}

    def fingerprint_hash(self) -> str:
        blob = json.dumps(self.fingerprint(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def replace(self, **changes: Any) -> JobConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown job config field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self, *, public: bool = True) -> dict[str, Any]:
        """The config as stored at the destination; storage options may hold secrets,
        so only their key names are kept."""
        out = dataclasses.asdict(self)
        if public:
            out["storage_options"] = sorted(self.storage_options)
        return out
