"""The one typed, frozen job config. CLI flags and YAML job specs both map onto it."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from segpipe.core.class_thresholds import ClassThresholds, read_class_thresholds

TASKS = ("panoptic", "instance", "semantic")
DTYPES = ("fp32", "bf16", "fp16")
SOURCE_FORMATS = ("images", "webdataset", "parquet", "manifest")
# The minimum query score per task when --threshold is not given: transformers' own defaults
# for post_process_{panoptic,instance}_segmentation (semantic keeps every query).
TASK_THRESHOLDS = {"panoptic": 0.5, "instance": 0.5, "semantic": 0.0}

# Fields that change what the outputs contain; a destination refuses a run that differs.
FINGERPRINT_FIELDS = (
    "model", "revision", "dtype", "task", "label_map", "threshold", "mask_threshold",
    "overlap_mask_area_threshold", "source_format", "class_thresholds", "jpeg_draft",
)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(flag: str, value: Any, *, integer: bool = False) -> float:
    """`value` if it is a finite number (an integer where one is wanted), else a clear error."""
    wanted = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
        raise ValueError(f"{flag} must be {'an integer' if integer else 'a number'}, not {value!r}")
    return value


def check_count(flag: str, value: Any) -> None:
    if _number(flag, value, integer=True) < 1:
        raise ValueError(f"{flag} must be at least 1, not {value}")


def check_resource(flag: str, value: Any) -> None:
    if _number(flag, value) < 0:
        raise ValueError(f"{flag} must be 0 or more, not {value}")


def check_share(flag: str, value: Any) -> None:
    if not 0 <= _number(flag, value) <= 1:
        raise ValueError(f"{flag} must be between 0 and 1, not {value}")


def check_timeout(flag: str, value: Any) -> None:
    if _number(flag, value) <= 0:
        raise ValueError(f"{flag} must be more than 0 seconds, not {value}")


def schemes_in(text: str) -> tuple[str, ...]:
    """The URI schemes of a comma-separated list ("http, file"), in lower case."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def check_schemes(flag: str, value: Any) -> None:
    if not isinstance(value, str) or not all(
            re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) for scheme in schemes_in(value)):
        raise ValueError(f"{flag} must be URI schemes separated by commas, such as "
                         f"http,file; not {value!r}")


# Every numeric field and its rule. Zero, where allowed, means: --gpus-per-worker, the worker
# takes no GPU and runs on the CPU; --cpus-per-worker, Ray reserves no CPU for it.
NUMERIC_CHECKS = {
    "batch_size": check_count, "shard_size": check_count, "num_workers": check_count,
    "max_attempts": check_count, "read_threads": check_count, "max_image_pixels": check_count,
    "max_image_bytes": check_count,
    "gpus_per_worker": check_resource, "cpus_per_worker": check_resource,
    "max_error_rate": check_share, "threshold": check_share, "mask_threshold": check_share,
    "overlap_mask_area_threshold": check_share,
    "read_timeout": check_timeout, "shard_timeout": check_timeout, "node_wait": check_timeout,
}
# Numeric fields that may be unset (None): a default decided elsewhere, or no limit.
OPTIONAL_NUMBERS = frozenset({"num_workers", "threshold", "shard_timeout"})


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
    # What the URIs of a manifest or URI table may reach beyond the defaults (sources.policy).
    allow_uri_schemes: str = ""  # comma-separated, as the flag takes them: "http,file"
    allow_private_hosts: bool = False
    label_map: str | None = None
    threshold: float | None = None
    class_thresholds: str | None = None  # a class-thresholds file (core.class_thresholds)
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.8
    allow_pickle_weights: bool = False
    max_image_pixels: int = 89_478_485  # Pillow's own default decompression-bomb limit
    max_image_bytes: int = 256 * 2**20  # a bigger image file is an errors row, never read whole
    # Decode JPEGs at the smallest 1/2, 1/4 or 1/8 scale that the model's input size still
    # fits (libjpeg's DCT scaling): faster decode and resize, outputs still at full size, but
    # not bit-equal to decoding in full, so off unless asked.
    jpeg_draft: bool = False
    read_threads: int = 8
    read_timeout: float = 300.0  # seconds one image's read may take before it is an errors row
    # Seconds a shard may take on its worker; off by default, since a healthy shard's time
    # grows with its size, the model and the hardware, and each read has its own timeout.
    shard_timeout: float | None = None
    node_wait: float = 600.0  # seconds a job waits for a node that can host a worker
    incremental: bool = False
    # Re-label an existing destination with another model (a new version): a new run over
    # every image; readers then take its labels. Without it another model is refused.
    new_model: bool = False
    progress: bool = True
    dashboard: bool = False  # a local Ray's dashboard: a process of its own, started only if asked

    def __post_init__(self) -> None:
        if self.source_format is not None and self.source_format not in SOURCE_FORMATS:
            raise ValueError(f"--source-format must be one of {', '.join(SOURCE_FORMATS)}, "
                             f"not {self.source_format!r}")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        for name, check in NUMERIC_CHECKS.items():
            value = getattr(self, name)
            if value is not None or name not in OPTIONAL_NUMBERS:
                check(flag_of(name), value)
        check_schemes("--allow-uri-schemes", self.allow_uri_schemes)
        if self.class_thresholds is not None and (
                not isinstance(self.class_thresholds, str) or not self.class_thresholds.strip()):
            raise ValueError(f"--class-thresholds must be a file path or URL, not "
                             f"{self.class_thresholds!r}")

    @property
    def uri_schemes(self) -> tuple[str, ...]:
        """The schemes `allow_uri_schemes` adds."""
        return schemes_in(self.allow_uri_schemes)

    @functools.cached_property
    def class_threshold_values(self) -> ClassThresholds:
        """The --class-thresholds file's content, read once per config (the settings guard
        and the model stage both need it)."""
        assert self.class_thresholds is not None
        return read_class_thresholds(self.class_thresholds, self.storage_options)

    def fingerprint(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in FINGERPRINT_FIELDS}
        if self.class_thresholds is not None:
            # What changes the outputs is the mapping, not where the file lies.
            out["class_thresholds"] = self.class_threshold_values.as_dict()
        return out

    @property
    def score_threshold(self) -> float:
        """The minimum query score: --threshold, else the task's default."""
        return self.threshold if self.threshold is not None else TASK_THRESHOLDS[self.task]

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


_FIELDS = {f.name: f for f in dataclasses.fields(JobConfig)}


def default_of(name: str) -> Any:
    """JobConfig's default for field `name`. Stages that take the value as a keyword argument
    default to this, so each default is written once, here."""
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    raise KeyError(f"JobConfig.{name} has no plain default")
