"""Per-class score thresholds (`segpipe annotate --class-thresholds FILE`).

The file is JSON::

    {"format": "segpipe-class-thresholds", "version": 1,
     "thresholds": {"<category name>": <score in [0, 1]>, ...}}

A query of a listed class is kept only when its score passes that class's threshold; other
classes use `--threshold` (or the model's default). `segpipe review-report
--write-thresholds` writes such files from reviews.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from segpipe.core.errors import SegpipeError

FORMAT = "segpipe-class-thresholds"
VERSION = 1


class ClassThresholdsError(SegpipeError, ValueError):
    """A class-thresholds file that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class ClassThresholds:
    """The thresholds of one file, by category name; `source` names the file in errors."""

    source: str
    thresholds: tuple[tuple[str, float], ...]  # sorted by name, so equal content compares equal

    def as_dict(self) -> dict[str, float]:
        return dict(self.thresholds)

    def by_label(self, names: Mapping[int, str]) -> dict[int, float]:
        """Thresholds by model label index, from each label's category name; a name that no
        label has is an error naming it."""
        wanted = self.as_dict()
        unknown = sorted(set(wanted) - set(names.values()))
        if unknown:
            raise ClassThresholdsError(
                f"class thresholds {self.source}: {', '.join(map(repr, unknown))} not in the "
                f"model's label set (known: {', '.join(sorted(set(names.values())))})")
        return {label: wanted[name] for label, name in names.items() if name in wanted}


def parse_class_thresholds(obj: Any, source: str) -> ClassThresholds:
    """Check a decoded file's content; errors name `source` and the bad entry."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ClassThresholdsError(f"class thresholds {source}: expected a JSON object with "
                                   f'"format": "{FORMAT}"')
    if obj.get("version") != VERSION:
        raise ClassThresholdsError(f"class thresholds {source}: version {obj.get('version')!r} "
                                   f"is not supported (expected {VERSION})")
    entries = obj.get("thresholds")
    if not isinstance(entries, dict):
        raise ClassThresholdsError(f'class thresholds {source}: "thresholds" must be an object '
                                   "of category name to score")
    for name, value in entries.items():
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not 0 <= value <= 1):
            raise ClassThresholdsError(f"class thresholds {source}: {name!r} must be a score "
                                       f"between 0 and 1, not {value!r}")
    return ClassThresholds(source, tuple(sorted((str(k), float(v)) for k, v in entries.items())))


def read_class_thresholds(url: str, storage_options: Mapping[str, Any] | None = None,
                          ) -> ClassThresholds:
    """Read and check a class-thresholds file (a path or any fsspec URL)."""
    try:
        with fsspec.open(url, "rt", encoding="utf-8", **dict(storage_options or {})) as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise ClassThresholdsError(f"class thresholds {url}: not valid JSON: {exc}") from exc
    except FileNotFoundError as exc:
        raise ClassThresholdsError(f"class thresholds {url}: no such file") from exc
    return parse_class_thresholds(obj, url)
