"""Byte spans of the entries of a file: counted while a list is read, so that an entry can
be read again on its own, and several of them with one ranged read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Generic, NamedTuple, TypeVar

T = TypeVar("T")

READ_CHUNK = 2**20
# Entries this far apart are still read with one request: fewer requests beat fewer bytes.
MAX_GAP = 2**20


class Span(NamedTuple):
    """Where a list holds one URI: its entry's bytes, and for CSV the URI's column. (A
    tuple: one is made for every entry listed.)"""

    offset: int
    length: int
    column: int | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length

    def __str__(self) -> str:
        where = f"bytes={self.offset}+{self.length}"
        return where if self.column is None else f"{where},column={self.column}"

    @classmethod
    def parse(cls, text: str) -> Span:
        match = re.fullmatch(r"bytes=(\d+)\+(\d+)(?:,column=(\d+))?", text)
        if match is None:
            raise ValueError(f"{text!r} is not an entry's span")
        column = match.group(3)
        return cls(int(match.group(1)), int(match.group(2)), None if column is None else int(column))


@dataclass(frozen=True, slots=True)
class ByteRange(Generic[T]):
    """Bytes `start` to `end`, read with one request, and the spans (with their items) in it."""

    start: int
    end: int
    spans: list[tuple[T, Span]]

    def data_of(self, data: bytes, span: Span) -> bytes:
        """A span's bytes, from the bytes of this range."""
        return data[span.offset - self.start: span.end - self.start]


def byte_ranges(spans: list[tuple[T, Span]], max_gap: int = MAX_GAP) -> Iterator[ByteRange[T]]:
    """Spans grouped into ranges of bytes: sorted by offset, a gap up to `max_gap` joins two."""
    group: list[tuple[T, Span]] = []
    start = end = 0
    for item, span in sorted(spans, key=lambda pair: pair[1].offset):
        if group and span.offset - end > max_gap:
            yield ByteRange(start, end, group)
            group = []
        if not group:
            start, end = span.offset, span.end
        group.append((item, span))
        end = max(end, span.end)
    if group:
        yield ByteRange(start, end, group)


class Lines:
    """The lines of a binary file as text, each with its line end, split where text mode
    with newline="" splits (\\n, \\r\\n, \\r); `offset` is the byte where the next starts,
    `count` the number of lines read. UTF-8, with a byte order mark at the start skipped
    (as utf-8-sig reads). A line that is not UTF-8 raises UnicodeDecodeError, past which
    reading goes on with the next line."""

    def __init__(self, f: IO[bytes]) -> None:
        self._raw = self._split(f)
        self.offset = 0
        self.count = 0

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        raw = next(self._raw)
        first = self.offset == 0
        self.offset += len(raw)
        self.count += 1
        text = raw.decode("utf-8")
        return text.removeprefix("\ufeff") if first else text

    @staticmethod
    def _split(f: IO[bytes]) -> Iterator[bytes]:
        pending = b""
        while chunk := f.read(READ_CHUNK):
            # bytes.splitlines splits at \n, \r\n and \r only, as text mode does.
            lines = (pending + chunk).splitlines(keepends=True)
            pending = lines.pop()  # it may go on in the next chunk, or be half of a \r\n
            yield from lines
        if pending:
            yield pending
