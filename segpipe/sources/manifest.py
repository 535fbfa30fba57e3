"""Manifests: files that list image URIs, one image each.

- text (`.txt`, `.lst`): one URI per line; blank lines and lines starting with `#` are
  ignored.
- CSV (`.csv`, `.tsv`): a header row; the URIs are in `uri_column`, else the first of
  URI_COLUMNS in the header. The other columns are carried as the ref's fields. A row
  without a URI is counted as skipped.
- Parquet: a table of URIs (see `table`).

URIs may use the protocols that the manifest's `UriPolicy` allows (see `policy`); relative
ones resolve against the manifest's folder. Each image is identified by its URI, and an
image listed twice is planned once (the plan drops repeats).

An entry that cannot be read (not UTF-8, a CSV field over the csv module's limit) is
planned as a placeholder named by the manifest and the line the entry starts on, and the
worker makes it an errors row saying why: the rest of the manifest is planned as usual.

A signed URI (a presigned URL) is planned redacted, located by the bytes of its entry
(see `redacted`): a worker re-reads the entries of its shard, with one ranged read for
entries close together, which a shard's are. A placeholder is located the same way, and
its reason found again in its entry's bytes.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from segpipe.core.errors import SegpipeError
from segpipe.core.identity import image_id
from segpipe.core.items import ImageRef
from segpipe.io.storage import filesystem, redact, with_retries
from segpipe.sources.base import (
    DEFAULT_MAX_IMAGE_BYTES,
    SKIP_NO_URI,
    Fetched,
    Skipped,
    SourceConfigError,
    fail_shard_on_outage,
    uri_of,
)
from segpipe.sources.policy import UriPolicy
from segpipe.sources.redacted import SourceChangedError, uri_if_unchanged, uri_ref
from segpipe.sources.spans import Lines, Span, byte_ranges
from segpipe.sources.table import MAX_FIELD_CHARS, URI_COLUMNS
from segpipe.sources.uris import fetch_uris, folder_of, resolve_uri

TEXT_SUFFIXES = (".txt", ".lst")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
MANIFEST_SUFFIXES = TEXT_SUFFIXES + tuple(CSV_DELIMITERS)
# The errors an entry's own bytes can cause: anything else is about the whole file.
RECORD_ERRORS = (csv.Error, UnicodeDecodeError)

log = logging.getLogger(__name__)


class UnreadableEntry(SegpipeError, ValueError):
    """A manifest entry that could not be parsed; it names no image to read."""


class Entry(NamedTuple):
    """One entry of a manifest: its URI and fields, or the error that left them unknown."""

    span: Span
    line: int  # the line it starts on, from 1
    text: str = ""
    fields: dict[str, Any] | None = None
    error: BaseException | None = None


@dataclass
class Manifest:
    """Images listed by URI in a text or CSV file."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    uri_column: str | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    allow_uri_schemes: tuple[str, ...] = ()  # beyond those a manifest may always name
    allow_private_hosts: bool = False

    @property
    def delimiter(self) -> str | None:
        """The CSV delimiter, or None for a text manifest (the query of a signed URL aside)."""
        name = self.url.split("?", 1)[0].lower()
        return next((d for suffix, d in CSV_DELIMITERS.items() if name.endswith(suffix)), None)

    def uri_policy(self) -> UriPolicy:
        return UriPolicy.for_list([self.url], extra_schemes=self.allow_uri_schemes,
                                  private_hosts=self.allow_private_hosts)

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        skipped = Skipped() if skipped is None else skipped
        folder = folder_of(self.url, self.storage_options)
        fs, path = filesystem(self.url, self.storage_options)
        with fs.open(path, "rb") as f:
            lines = Lines(f)
            delimiter = self.delimiter
            entries = (self._csv_entries(lines, delimiter, skipped) if delimiter
                       else self._text_entries(lines))
            for entry in entries:
                if entry.error is not None:
                    yield self._placeholder(uri_of(self.url, path), entry)
                else:
                    yield uri_ref(resolve_uri(folder, entry.text), entry.fields,
                                  entry.span.__str__)

    def _placeholder(self, uri: str, entry: Entry) -> ImageRef:
        """The ref that stands for an entry that could not be read: an errors row later."""
        log.warning("%s, line %d: %s; it becomes an errors row", redact(self.url), entry.line,
                    redact(f"{type(entry.error).__name__}: {entry.error}"))
        member = f"line={entry.line}"
        return ImageRef(image_id(uri, member), uri, member, locator=str(entry.span))

    @staticmethod
    def _text_entries(lines: Lines) -> Iterator[Entry]:
        while True:
            start, line = lines.offset, lines.count + 1
            try:
                text = next(lines).strip()
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                yield Entry(Span(start, lines.offset - start), line, error=exc)
                continue
            if text and not text.startswith("#"):
                yield Entry(Span(start, lines.offset - start), line, text)

    def _csv_entries(self, lines: Lines, delimiter: str, skipped: Skipped) -> Iterator[Entry]:
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = next(reader, [])
        except RECORD_ERRORS as exc:
            raise SourceConfigError(f"{redact(self.url)}: its header row could not be read: "
                                    f"{exc}") from exc
        wanted = [self.uri_column] if self.uri_column else list(URI_COLUMNS)
        column = next((name for name in wanted if name in header), None)
        if column is None:
            raise SourceConfigError(
                f"{redact(self.url)}: no URI column ({', '.join(wanted)}) in the header "
                f"({', '.join(header)}); name it with --uri-column")
        # A repeated name reads as its last column, as csv.DictReader reads it.
        index = len(header) - 1 - header[::-1].index(column)
        while True:
            start, line = lines.offset, lines.count + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except RECORD_ERRORS as exc:
                # The reader starts afresh at the next line: only this entry is lost.
                yield Entry(Span(start, lines.offset - start), line, error=exc)
                continue
            # Values past the header have no name, and a short row lacks its last columns:
            # neither is carried, as with csv.DictReader.
            entry = dict(zip(header, row, strict=False))
            text = (entry.pop(column, None) or "").strip()
            if not text:
                skipped[SKIP_NO_URI] += 1
                continue
            fields = {k: v for k, v in entry.items() if len(v) <= MAX_FIELD_CHARS}
            yield Entry(Span(start, lines.offset - start, index), line, text, fields)

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        return fetch_uris(refs, self.storage_options, threads=threads, recover=self._recover,
                          policy=self.uri_policy(), max_bytes=self.max_image_bytes)

    def _recover(self, refs: list[ImageRef]) -> dict[int, str | BaseException]:
        """The real URI of each ref planned redacted, re-read from its entry's bytes (and
        for a placeholder, why its entry cannot be read)."""
        fs, path = filesystem(self.url, self.storage_options)
        folder = folder_of(self.url, self.storage_options)
        source = f"the manifest {redact(self.url)}"
        found: dict[int, str | BaseException] = {}
        for byte_range in byte_ranges([(ref, Span.parse(ref.locator or "")) for ref in refs]):
            try:
                read = partial(fs.cat_file, path, start=byte_range.start, end=byte_range.end)
                data = with_retries(read, what=self.url)
            except Exception as exc:  # noqa: BLE001 - the policy raises it or makes it rows
                cause = fail_shard_on_outage(exc)
                error = OSError(f"the manifest {redact(self.url)} could not be re-read: "
                                f"{type(cause).__name__}: {cause}")
                found.update((ref.image_id, error) for ref, _ in byte_range.spans)
                continue
            for ref, span in byte_range.spans:
                entry = byte_range.data_of(data, span)
                if ref.member is not None:
                    found[ref.image_id] = _unreadable(entry, span, self.delimiter, source)
                    continue
                uri = _uri_in(entry, span, folder, self.delimiter or ",")
                found[ref.image_id] = uri_if_unchanged(ref, uri, source=source,
                                                       where=f"the entry at {span}")
        return found


def _parse(entry: bytes, span: Span, delimiter: str | None) -> list[str]:
    """An entry's values (its one line, for a text manifest), parsed as when planning."""
    text = entry.decode("utf-8")
    if span.offset == 0:
        text = text.removeprefix("\ufeff")
    if delimiter is None:
        return [text]
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])


def _unreadable(entry: bytes, span: Span, delimiter: str | None, source: str) -> BaseException:
    """Why an entry planned as a placeholder cannot be read, found again in its bytes."""
    try:
        _parse(entry, span, delimiter)
    except RECORD_ERRORS as exc:
        kind = "UTF-8" if isinstance(exc, UnicodeDecodeError) else "CSV"
        return UnreadableEntry(f"this entry of the manifest is not valid {kind} ({exc}); "
                                "fix or remove it")
    return SourceChangedError(f"{source} changed since this run was planned: the entry at "
                              f"{span} could not be read then, and reads now")


def _uri_in(entry: bytes, span: Span, folder: str, delimiter: str) -> str | None:
    """The URI an entry's bytes list now, parsed as when planning; None for none."""
    try:
        row = _parse(entry, span, delimiter if span.column is not None else None)
    except RECORD_ERRORS:
        return None
    column = 0 if span.column is None else span.column
    text = row[column].strip() if column < len(row) else ""
    if not text or (span.column is None and text.startswith("#")):
        return None
    return resolve_uri(folder, text)
