"""Manifests: files that list image URIs, one image each.

- text (`.txt`, `.lst`): one URI per line; blank lines and lines starting with `#` are
  ignored.
- CSV (`.csv`, `.tsv`): a header row; the URIs are in `uri_column`, else the first of
  URI_COLUMNS in the header. The other columns are carried as the ref's fields.
- Parquet: a table of URIs (see `table`).

URIs may use any protocol; relative ones resolve against the manifest's folder. Each
image is identified by its URI, and an image listed twice is planned once.

A signed URI (a presigned URL) is planned redacted, located by the bytes of its record
(see `located`): a worker re-reads the records of its shard, with one ranged read for
records close together, which a shard's are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from segpipe.records import ImageRef
from segpipe.sources.base import Fetched, SourceConfigError, unique_refs
from segpipe.sources.located import checked, uri_ref
from segpipe.sources.spans import Lines, Span, byte_runs
from segpipe.sources.table import MAX_FIELD_CHARS, URI_COLUMNS
from segpipe.sources.uris import fetch_uris, folder_of, resolve_uri
from segpipe.storage import filesystem, is_transient, redact, with_retries

TEXT_SUFFIXES = (".txt", ".lst")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
MANIFEST_SUFFIXES = TEXT_SUFFIXES + tuple(CSV_DELIMITERS)


@dataclass
class Manifest:
    """Images listed by URI in a text or CSV file."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    uri_column: str | None = None

    @property
    def delimiter(self) -> str | None:
        """The CSV delimiter, or None for a text manifest (the query of a signed URL aside)."""
        name = self.url.split("?", 1)[0].lower()
        return next((d for suffix, d in CSV_DELIMITERS.items() if name.endswith(suffix)), None)

    def list_images(self) -> Iterator[ImageRef]:
        return unique_refs(self._refs, url=self.url)

    def _refs(self) -> Iterator[ImageRef]:
        folder = folder_of(self.url, self.storage_options)
        fs, path = filesystem(self.url, self.storage_options)
        with fs.open(path, "rb") as f:
            lines = Lines(f)
            delimiter = self.delimiter
            records = self._csv_records(lines, delimiter) if delimiter else self._text_records(lines)
            for text, fields, span in records:
                yield uri_ref(resolve_uri(folder, text), fields, span.__str__)

    @staticmethod
    def _text_records(lines: Lines) -> Iterator[tuple[str, dict[str, Any], Span]]:
        start = 0
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                yield text, {}, Span(start, lines.offset - start)
            start = lines.offset

    def _csv_records(self, lines: Lines, delimiter: str,
                     ) -> Iterator[tuple[str, dict[str, Any], Span]]:
        reader = csv.reader(lines, delimiter=delimiter)
        header = next(reader, [])
        wanted = [self.uri_column] if self.uri_column else list(URI_COLUMNS)
        column = next((name for name in wanted if name in header), None)
        if column is None:
            raise SourceConfigError(
                f"{redact(self.url)}: no URI column ({', '.join(wanted)}) in the header "
                f"({', '.join(header)}); name it with --uri-column")
        # A repeated name reads as its last column, as csv.DictReader reads it.
        index = len(header) - 1 - header[::-1].index(column)
        start = lines.offset
        for row in reader:
            # Values past the header have no name, and a short row lacks its last columns:
            # neither is carried, as with csv.DictReader.
            record = dict(zip(header, row, strict=False))
            text = (record.pop(column, None) or "").strip()
            if text:
                fields = {k: v for k, v in record.items() if len(v) <= MAX_FIELD_CHARS}
                yield text, fields, Span(start, lines.offset - start, index)
            start = lines.offset

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        return fetch_uris(refs, self.storage_options, threads=threads, recover=self._recover)

    def _recover(self, refs: list[ImageRef]) -> dict[int, str | BaseException]:
        """The real URI of each ref planned redacted, re-read from its record's bytes."""
        fs, path = filesystem(self.url, self.storage_options)
        folder = folder_of(self.url, self.storage_options)
        delimiter = self.delimiter or ","  # only CSV records name a column
        found: dict[int, str | BaseException] = {}
        for run in byte_runs([(ref, Span.parse(ref.locator or "")) for ref in refs]):
            try:
                read = partial(fs.cat_file, path, start=run.start, end=run.end)
                data = with_retries(read, what=self.url)
            except Exception as exc:  # noqa: BLE001 - an errors row for each image, below
                if is_transient(exc):
                    raise  # an outage: the shard is tried again later
                error = OSError(f"the manifest {redact(self.url)} could not be re-read: "
                                f"{type(exc).__name__}: {exc}")
                found.update((ref.image_id, error) for ref, _ in run.spans)
                continue
            for ref, span in run.spans:
                uri = _uri_in(run.data_of(data, span), span, folder, delimiter)
                found[ref.image_id] = checked(ref, uri, source=f"the manifest {redact(self.url)}",
                                              where=f"the record at {span}")
        return found


def _uri_in(record: bytes, span: Span, folder: str, delimiter: str) -> str | None:
    """The URI a record's bytes list now, parsed as when planning; None for none."""
    try:
        text = record.decode("utf-8")
        if span.offset == 0:
            text = text.removeprefix("\ufeff")
        if span.column is not None:
            row = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
            text = row[span.column] if span.column < len(row) else ""
    except (UnicodeDecodeError, csv.Error):
        return None
    text = text.strip()
    if not text or (span.column is None and text.startswith("#")):
        return None
    return resolve_uri(folder, text)
