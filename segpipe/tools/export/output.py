"""Export files on any fsspec URL, written as a stream and published only when complete
(see `segpipe.io.storage.open_atomic`), so a reader never sees half an export."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import IO, Any

from segpipe.io.storage import open_atomic


def open_text(url: str, storage_options: dict[str, Any] | None = None,
              ) -> AbstractContextManager[IO[str]]:
    return open_atomic(url, storage_options, text=True)


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
