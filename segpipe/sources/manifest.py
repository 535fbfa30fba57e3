"""Manifests: files that list image URIs, one image each.

- text (`.txt`, `.lst`): one URI per line; blank lines and lines starting with `#` are
  ignored.
- CSV (`.csv`, `.tsv`): a header row; the URIs are in `uri_column`, else the first of
  URI_COLUMNS in the header. The other columns are carried as the ref's fields.
- Parquet: a table of URIs (see `table`).

URIs may use any protocol; relative ones resolve against the manifest's folder. Each
image is identified by its URI, and an image listed twice is planned once.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from segpipe.identity import image_id
from segpipe.records import ImageRef
from segpipe.sources.base import Fetched, SourceConfigError, unique_refs
from segpipe.sources.table import MAX_FIELD_CHARS, URI_COLUMNS
from segpipe.sources.uris import fetch_uris, folder_of, resolve_uri
from segpipe.storage import filesystem, redact, redact_uri

TEXT_SUFFIXES = (".txt", ".lst")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
MANIFEST_SUFFIXES = TEXT_SUFFIXES + tuple(CSV_DELIMITERS)


@dataclass
class Manifest:
    """Images listed by URI in a text or CSV file."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    uri_column: str | None = None

    def list_images(self) -> Iterator[ImageRef]:
        return unique_refs(self._refs, url=self.url)

    def _refs(self) -> Iterator[ImageRef]:
        folder = folder_of(self.url, self.storage_options)
        fs, path = filesystem(self.url, self.storage_options)
        delimiter = next((d for suffix, d in CSV_DELIMITERS.items()
                          if path.lower().endswith(suffix)), None)
        with fs.open(path, "rt", encoding="utf-8-sig", newline="") as f:
            rows = self._csv_rows(f, delimiter) if delimiter else self._text_rows(f)
            for text, fields in rows:
                uri = resolve_uri(folder, text)
                yield ImageRef(image_id(redact_uri(uri)), uri, fields=fields or None)

    @staticmethod
    def _text_rows(f: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        for line in f:
            text = line.strip()
            if text and not text.startswith("#"):
                yield text, {}

    def _csv_rows(self, f: Any, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        wanted = [self.uri_column] if self.uri_column else list(URI_COLUMNS)
        column = next((name for name in wanted if name in header), None)
        if column is None:
            raise SourceConfigError(
                f"{redact(self.url)}: no URI column ({', '.join(wanted)}) in the header "
                f"({', '.join(header)}); name it with --uri-column")
        for row in reader:
            text = (row.pop(column, None) or "").strip()
            if text:
                yield text, {k: v for k, v in row.items()
                             if k is not None and v is not None and len(v) <= MAX_FIELD_CHARS}

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        return fetch_uris(refs, self.storage_options, threads=threads)
