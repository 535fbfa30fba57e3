"""Parquet tables of images: one file, a folder (or `table.parquet/` folder of parts) of
`.parquet` files taken in key order, a glob, or a `::` list.

A table holds either image bytes or image URIs:

- bytes: `image_column`, else the first of IMAGE_COLUMNS that is binary or a struct with
  a binary "bytes" field (as Hugging Face datasets store images). Identity: `uri` is
  the table file's URI and `member` is `row=<index in the file>`, or the value of
  `id_column` when given (it must be unique and non-null within a file).
- URIs: `uri_column`, else the first of URI_COLUMNS that is a string. Each image is
  identified by its own URI (relative ones resolve against the table's folder), and an
  image named twice is planned once (the plan drops repeats). A signed URI is planned
  redacted, located by its table file and row (see `redacted`). What the URIs may reach
  is limited as for manifests (see `policy`); a row without a URI is counted as skipped.

An image of more than `max_image_bytes` is an errors row.

Other scalar columns (numbers, booleans, dates, strings up to MAX_FIELD_CHARS) are
carried as the ref's fields. Files are read by row batches, never whole.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, groupby
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from segpipe.core.identity import duplicate_ids, image_id
from segpipe.core.items import ImageRef
from segpipe.io.storage import filesystem, redact, with_retries
from segpipe.sources.base import (
    DEFAULT_MAX_IMAGE_BYTES,
    SKIP_NO_URI,
    UNREADABLE,
    Fetched,
    Scan,
    Skipped,
    SourceConfigError,
    fail_shard_on_outage,
    fetch_scanned,
    plan_containers,
    too_large,
)
from segpipe.sources.files import version_of
from segpipe.sources.listing import FileEntry, container_files, expand_urls
from segpipe.sources.policy import UriPolicy
from segpipe.sources.redacted import uri_if_unchanged, uri_ref
from segpipe.sources.uris import fetch_uris, resolve_uri

PARQUET_SUFFIXES = (".parquet", ".pq")
IMAGE_COLUMNS = ("image", "image_bytes", "bytes", "content", "img", "jpg", "jpeg", "png")
URI_COLUMNS = ("uri", "url", "path", "image_uri", "image_url", "image_path")
MAX_FIELD_CHARS = 1024
LIST_BATCH_ROWS = 8192
FETCH_BATCH_ROWS = 64  # image bytes are large: few rows at a time
BLOCK_SIZE = 8 * 2**20

T = TypeVar("T")


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        index = t.get_field_index("bytes")
        return index >= 0 and _is_binary(t.field(index).type)
    return _is_binary(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_field_type(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
            or _is_string(t) or pa.types.is_date(t) or pa.types.is_timestamp(t)
            or pa.types.is_decimal(t))


def _field_value(value: Any) -> Any:
    """A value the plan's JSON can hold, or None for one too large to carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return None
    return value


@dataclass
class ParquetTable:
    """Images in Parquet tables, as bytes or as URIs (see the module docstring)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    image_column: str | None = None
    uri_column: str | None = None
    id_column: str | None = None
    uris_only: bool = False  # a Parquet manifest: URIs, never bytes
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    allow_uri_schemes: tuple[str, ...] = ()  # beyond those a URI table may always name
    allow_private_hosts: bool = False

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        skipped = Skipped() if skipped is None else skipped
        if self._holds_uris():
            return self._plan(partial(self._list_uris, skipped=skipped), skipped)
        return self._plan(self._list_rows, skipped)

    def uri_policy(self) -> UriPolicy:
        return UriPolicy.for_list(expand_urls(self.url), extra_schemes=self.allow_uri_schemes,
                                  private_hosts=self.allow_private_hosts)

    def _files(self, skipped: Skipped | None = None) -> Iterator[FileEntry]:
        return container_files(self.url, self.storage_options, PARQUET_SUFFIXES,
                               may_be_folder=True, skipped=skipped)

    def _plan(self, refs_of: Callable[[FileEntry], Iterator[ImageRef]],
              skipped: Skipped) -> Iterator[ImageRef]:
        containers = ((entry.uri, refs_of(entry)) for entry in self._files(skipped))
        return plan_containers(containers, url=self.url)

    def _holds_uris(self) -> bool:
        """URIs or bytes: the options say, else the first readable file's schema does."""
        if self.uris_only or self.uri_column:
            return self.image_column is None
        if self.image_column:
            return False
        for entry in self._files():
            try:
                schema = self._open(entry.uri, lambda pf: pf.schema_arrow)
            except (OSError, pa.ArrowException):
                continue  # an unreadable file gets its errors row when planned
            if self._find_image_column(schema) is not None:
                return False
            if self._find_uri_column(schema) is not None:
                return True
            raise SourceConfigError(
                f"{redact(entry.uri)} has no image column ({', '.join(IMAGE_COLUMNS)}: binary, "
                f"or a struct with 'bytes') and no URI column ({', '.join(URI_COLUMNS)}); its "
                f"columns: {', '.join(schema.names)}. Name one with --image-column or "
                "--uri-column.")
        return False

    def _open(self, uri: str, use: Callable[[pq.ParquetFile], T]) -> T:
        fs, path = filesystem(uri, self.storage_options)

        def run() -> T:
            with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
                return use(pq.ParquetFile(f))

        return with_retries(run, what=uri)

    def _find_image_column(self, schema: pa.Schema) -> str | None:
        if self.image_column:
            return self.image_column if self.image_column in schema.names else None
        return next((name for name in IMAGE_COLUMNS if name in schema.names
                     and _is_image_type(schema.field(name).type)), None)

    def _find_uri_column(self, schema: pa.Schema) -> str | None:
        if self.uri_column:
            return self.uri_column if self.uri_column in schema.names else None
        return next((name for name in URI_COLUMNS if name in schema.names
                     and _is_string(schema.field(name).type)), None)

    def _require(self, found: str | None, what: str, uri: str, schema: pa.Schema) -> str:
        if found is None:
            raise SourceConfigError(f"{redact(uri)}: no {what} column; its columns: "
                                    f"{', '.join(schema.names)}")
        kind = schema.field(found).type
        if not (_is_image_type(kind) if what == "image" else _is_string(kind)):
            raise SourceConfigError(f"{redact(uri)}: column {found!r} holds {kind}, "
                                    f"not {'image bytes' if what == 'image' else 'URIs'}")
        return found

    def _list_rows(self, entry: FileEntry) -> Iterator[ImageRef]:
        """One ref per row of a table of image bytes."""
        fs, path = filesystem(entry.uri, self.storage_options)
        version = version_of(entry.info) if entry.info else None
        with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            image = self._require(self._find_image_column(schema), "image", entry.uri, schema)
            if self.id_column:
                if self.id_column not in schema.names:
                    raise SourceConfigError(f"{redact(entry.uri)}: no id column "
                                            f"{self.id_column!r}; its columns: "
                                            f"{', '.join(schema.names)}")
                self._check_ids(pf, entry.uri)
            carried = [f.name for f in schema if f.name != image and _is_field_type(f.type)]
            columns = list(dict.fromkeys([*carried, self.id_column] if self.id_column else carried))
            row = 0
            for batch in pf.iter_batches(batch_size=LIST_BATCH_ROWS, columns=columns):
                ids = batch.column(self.id_column).to_pylist() if self.id_column else None
                for i, fields in enumerate(_batch_fields(batch, carried)):
                    member = f"row={row}" if ids is None else _member_of(ids[i])
                    yield ImageRef(image_id(entry.uri, member), entry.uri, member, version,
                                   fields or None)
                    row += 1

    def _check_ids(self, pf: pq.ParquetFile, uri: str) -> None:
        """Ids must name one row each, else two images would share one identity."""
        def members() -> Iterator[str]:
            for batch in pf.iter_batches(batch_size=LIST_BATCH_ROWS, columns=[self.id_column]):
                for value in batch.column(0).to_pylist():
                    if value is None:
                        raise SourceConfigError(f"{redact(uri)}: null in id column "
                                                f"{self.id_column!r}")
                    yield _member_of(value)

        repeated = duplicate_ids(image_id(uri, member) for member in members())
        if repeated:
            raise SourceConfigError(f"{redact(uri)}: id column {self.id_column!r} repeats "
                                    f"{len(repeated)} value(s); ids must be unique per file")

    def _list_uris(self, entry: FileEntry, *, skipped: Skipped) -> Iterator[ImageRef]:
        """One ref per row of a table of image URIs, identified by the URI; a signed URI is
        planned redacted and located by its row (see `redacted`). Rows without a URI are
        counted in `skipped`."""
        fs, path = filesystem(entry.uri, self.storage_options)
        folder = entry.uri.rsplit("/", 1)[0]
        with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            column = self._require(self._find_uri_column(schema), "URI", entry.uri, schema)
            columns = [f.name for f in schema if _is_field_type(f.type)]
            row = 0
            for batch in pf.iter_batches(batch_size=LIST_BATCH_ROWS, columns=columns):
                for fields in _batch_fields(batch, columns):
                    text = fields.pop(column, None)
                    if text and text.strip():
                        uri = resolve_uri(folder, text.strip())
                        yield uri_ref(uri, fields, partial(_row_locator, entry.uri, row))
                    else:
                        skipped[SKIP_NO_URI] += 1
                    row += 1

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        # URI rows are read from their own URIs; byte rows from their table file, one
        # sequential pass over the row groups that hold them.
        for table, group in groupby(refs, key=lambda ref: None if ref.member is None else ref.uri):
            batch = list(group)
            if table is None:
                yield from fetch_uris(batch, self.storage_options, threads=threads,
                                      recover=self._recover, policy=self.uri_policy(),
                                      max_bytes=self.max_image_bytes)
            else:
                keys = [None if ref.member == UNREADABLE else ref.member for ref in batch]
                yield from fetch_scanned(batch, keys, self._scanner(table, set(keys) - {None}))

    def _recover(self, refs: list[ImageRef]) -> dict[int, str | BaseException]:
        """The real URI of each ref planned redacted, re-read from its row of its table file."""
        by_table: dict[str, dict[int, ImageRef]] = {}
        for ref in refs:
            table, _, row_number = (ref.locator or "").rpartition("#row=")
            by_table.setdefault(table, {})[int(row_number)] = ref
        found: dict[int, str | BaseException] = {}
        for table, refs_by_row in by_table.items():
            try:
                texts = self._open(table, partial(self._uri_texts, table, set(refs_by_row)))
            except Exception as exc:  # noqa: BLE001 - the policy raises it or makes it rows
                cause = fail_shard_on_outage(exc)
                error = OSError(f"the URI table {redact(table)} could not be re-read: "
                                f"{type(cause).__name__}: {cause}")
                found.update((ref.image_id, error) for ref in refs_by_row.values())
                continue
            folder = table.rsplit("/", 1)[0]
            for row, ref in refs_by_row.items():
                text = (texts.get(row) or "").strip()
                found[ref.image_id] = uri_if_unchanged(
                    ref, resolve_uri(folder, text) if text else None,
                    source=f"the URI table {redact(table)}", where=f"row {row}")
        return found

    def _uri_texts(self, table: str, rows: set[int], pf: pq.ParquetFile) -> dict[int, str | None]:
        """Row -> URI column value for `rows`: only the row groups holding them are read,
        each up to its last wanted row, and only the URI column."""
        schema = pf.schema_arrow
        column = self._require(self._find_uri_column(schema), "URI", table, schema)
        starts, by_group = _row_groups(pf, rows)
        texts: dict[int, str | None] = {}
        for group, wanted in by_group.items():
            row, left = starts[group], iter(wanted)
            want = next(left, None)
            for batch in pf.iter_batches(batch_size=LIST_BATCH_ROWS, row_groups=[group],
                                         columns=[column]):
                while want is not None and want < row + batch.num_rows:
                    texts[want] = batch.column(0)[want - row].as_py()
                    want = next(left, None)
                if want is None:
                    break
                row += batch.num_rows
        return texts

    def _scanner(self, uri: str, wanted: set[Any]) -> Scan:
        fs, path = filesystem(uri, self.storage_options)

        def scan(skip: set[Any]) -> Iterator[tuple[Any, bytes | BaseException]]:
            with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                image = self._require(self._find_image_column(schema), "image", uri, schema)
                rows = self._rows_of(pf, wanted - skip)
                starts, by_group = _row_groups(pf, rows)
                for group in by_group:
                    row = starts[group]
                    for batch in pf.iter_batches(batch_size=FETCH_BATCH_ROWS, row_groups=[group],
                                                 columns=[image]):
                        for offset in range(batch.num_rows):
                            member = rows.get(row + offset)
                            if member is not None:
                                value = batch.column(0)[offset].as_py()
                                yield member, _image_bytes(value, image, self.max_image_bytes)
                        row += batch.num_rows

        return scan

    def _rows_of(self, pf: pq.ParquetFile, members: set[str]) -> dict[int, str]:
        """Row index -> member for the wanted members."""
        if self.id_column is None:
            return {int(m.removeprefix("row=")): m for m in members if m.startswith("row=")}
        rows: dict[int, str] = {}
        row = 0
        for batch in pf.iter_batches(batch_size=LIST_BATCH_ROWS, columns=[self.id_column]):
            for value in batch.column(0).to_pylist():
                if value is not None and _member_of(value) in members:
                    rows[row] = _member_of(value)
                row += 1
        return rows


def _row_locator(table: str, row: int) -> str:
    return f"{table}#row={row}"


def _row_groups(pf: pq.ParquetFile, rows: Iterable[int]) -> tuple[list[int], dict[int, list[int]]]:
    """The first row of each row group (and the row count last), and the wanted rows that
    exist by row group, both in order."""
    starts = [0, *accumulate(pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups))]
    by_group: dict[int, list[int]] = {}
    for row in sorted(rows):
        if 0 <= row < starts[-1]:
            by_group.setdefault(bisect_right(starts, row) - 1, []).append(row)
    return starts, by_group


def _member_of(value: Any) -> str:
    return str(value)


def _batch_fields(batch: pa.RecordBatch, names: list[str]) -> Iterator[dict[str, Any]]:
    """The values of the columns `names`, row by row, made fit for JSON."""
    columns = [batch.column(name).to_pylist() for name in names]
    for i in range(batch.num_rows):
        yield {name: _field_value(column[i]) for name, column in zip(names, columns, strict=True)}


def _image_bytes(value: Any, column: str, max_bytes: int) -> bytes | BaseException:
    if isinstance(value, dict):  # a struct, as Hugging Face datasets store images
        value = value.get("bytes")
    if not value:
        return ValueError(f"no image bytes in column {column!r}")
    if len(value) > max_bytes:
        return too_large(len(value), max_bytes)
    return value
