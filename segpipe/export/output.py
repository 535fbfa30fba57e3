"""Export files on any fsspec URL, written as a stream.

Local files are written to a temporary name and renamed, so a reader never sees half an
export; object stores publish an upload only when it completes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from fsspec.core import split_protocol

from segpipe.storage import filesystem


@contextmanager
def open_text(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[IO[str]]:
    fs, path = filesystem(url, storage_options)
    if split_protocol(url)[0] not in (None, "file", "local"):
        with fs.open(path, "w", encoding="utf-8") as out:
            yield out
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sibling(url: str, name: str) -> str:
    """The URL of `name` in the same folder as `url`."""
    head, _, _ = url.rpartition("/")
    return f"{head}/{name}" if head else name


class JsonArrayWriter:
    """Writes `[item, item, ...]` one item at a time."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._first = True
        self.count = 0

    def open(self) -> None:
        self._out.write("[")

    def add(self, item: Any) -> None:
        if not self._first:
            self._out.write(",\n")
        self._out.write(json.dumps(item, separators=(",", ":")))
        self._first = False
        self.count += 1

    def close(self) -> None:
        self._out.write("]")
