"""Readers: where images come from. A source lists ImageRefs (streamed, deterministic
order) on the driver and fetches their bytes on the workers.

SRC is any fsspec URL (or a `::` list of them). Its kind, unless `source_format` names
it ("images", "webdataset", "parquet" or "manifest"), is picked from SRC, the first
URL of a list deciding:

1. webdataset: it ends with `.tar`, or is a brace pattern of `.tar` files;
2. parquet: it ends with `.parquet` or `.pq`;
3. manifest: it ends with `.txt`, `.lst`, `.csv` or `.tsv`;
4. otherwise SRC is a folder, prefix or glob, and the first page of its listing
   (1,000 files) decides: parquet when it holds `.parquet` files and no images,
   webdataset when it holds `.tar` files and no images, else images.

A Parquet file given with `source_format="manifest"` is read as a table of URIs.

Every source refuses an image of more than `max_image_bytes`; the sources of URIs
(manifests, URI tables) also limit what their URIs may reach (see `policy`), unless
`allow_uri_schemes` or `allow_private_hosts` say otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any, TypedDict

from segpipe.core.config import SOURCE_FORMATS, JobConfig
from segpipe.io.storage import redact
from segpipe.sources.base import (
    DEFAULT_MAX_IMAGE_BYTES,
    EmptySourceError,
    Source,
    SourceConfigError,
)
from segpipe.sources.files import ImageFiles, is_image_name
from segpipe.sources.listing import PAGE_SIZE, expand_urls, list_files
from segpipe.sources.manifest import MANIFEST_SUFFIXES, Manifest
from segpipe.sources.table import PARQUET_SUFFIXES, ParquetTable
from segpipe.sources.webdataset import TAR_SUFFIXES, TarShards

__all__ = [
    "EmptySourceError", "ImageFiles", "Manifest", "ParquetTable", "Source", "SourceConfigError",
    "TarShards", "detect_format", "open_source",
]




def detect_format(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The kind of source `url` names, by the rules in this module's docstring."""
    first = expand_urls(url)[0] if url.strip() else url
    name = first.split("?", 1)[0].rstrip("/").lower()
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(MANIFEST_SUFFIXES):
        return "manifest"
    names = [entry.path.lower() for entry in islice(list_files(first, storage_options), PAGE_SIZE)]
    if not any(is_image_name(n) for n in names):
        if any(n.endswith(PARQUET_SUFFIXES) for n in names):
            return "parquet"
        if any(n.endswith(TAR_SUFFIXES) for n in names):
            return "webdataset"
    return "images"


class _UriReach(TypedDict):
    """The limits every source of URIs takes, passed on as keyword arguments."""

    max_image_bytes: int
    allow_uri_schemes: tuple[str, ...]
    allow_private_hosts: bool


def source_from_config(config: JobConfig) -> Source:
    """The job's source, as `config` describes it."""
    return open_source(config.src, source_format=config.source_format,
                       storage_options=config.storage_options, image_column=config.image_column,
                       uri_column=config.uri_column, id_column=config.id_column,
                       max_image_bytes=config.max_image_bytes,
                       allow_uri_schemes=config.uri_schemes,
                       allow_private_hosts=config.allow_private_hosts)


def open_source(url: str, *, source_format: str | None = None,
                storage_options: dict[str, Any] | None = None, image_column: str | None = None,
                uri_column: str | None = None, id_column: str | None = None,
                max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                allow_uri_schemes: Sequence[str] = (), allow_private_hosts: bool = False,
                ) -> Source:
    """The source for `url`; the kind is picked from the URL unless `source_format` says."""
    options = storage_options or {}
    limits = {"max_image_bytes": max_image_bytes}
    reach = _UriReach(max_image_bytes=max_image_bytes,
                      allow_uri_schemes=tuple(allow_uri_schemes),
                      allow_private_hosts=allow_private_hosts)
    kind = source_format or detect_format(url, options)
    if kind not in SOURCE_FORMATS:
        raise ValueError(f"unknown --source-format {kind!r}: one of {', '.join(SOURCE_FORMATS)}")
    given = {"--image-column": image_column, "--uri-column": uri_column, "--id-column": id_column}
    allowed = {"images": (), "webdataset": (), "parquet": tuple(given),
               "manifest": ("--uri-column",)}[kind]
    wrong = [flag for flag, value in given.items() if value and flag not in allowed]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} do(es) not apply to a {kind} source "
                         f"({redact(url)}); see --source-format")
    if kind == "webdataset":
        return TarShards(url, options, **limits)
    if kind == "parquet":
        return ParquetTable(url, options, image_column, uri_column, id_column, **reach)
    if kind == "manifest":
        if url.split("?", 1)[0].rstrip("/").lower().endswith(PARQUET_SUFFIXES):
            return ParquetTable(url, options, uri_column=uri_column, uris_only=True, **reach)
        return Manifest(url, options, uri_column, **reach)
    return ImageFiles(url, options, **limits)
