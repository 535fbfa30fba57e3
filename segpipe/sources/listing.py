"""Streamed, sorted file listings on any fsspec filesystem.

A listing never materializes: on S3 it pages through ListObjectsV2 (1,000 keys a page,
already in key order); elsewhere it walks directories depth first, holding one
directory's entries per level. Both give the same order: files sorted by their full
key, as an object store sorts them (a directory sorts as its name plus "/").

`url` is a folder/prefix, a single file, or a glob. Globs follow fsspec: `*` and `?`
stay within one path segment, `**` spans any number of them (none included), `[...]`
is a character class. Only the static prefix before the first wildcard is listed.
Names starting with "." below the listed root are skipped (hidden files and folders).
A `::`-separated list of URLs and brace patterns (`shard-{0000..0099}.tar`,
`{train,val}`) are expanded in order by `expand_urls`.

Only regular files are listed. A FIFO, socket or device (a read of which may never end) and
a dangling link are counted as skipped instead (see `base.SKIP_REASONS`). Symlinked folders
are followed, but each real folder (by device and inode) is walked once, from the first path
in key order that reaches it: folders that converge (a/x -> c, b/y -> c) or loop back up
are not listed again, and each path that reaches one again counts as a skipped key. A file
reached by two paths (two links to it) stays two keys, and so two images, since identity is
the URI; walking a real folder once keeps whole folders from being planned twice.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

from segpipe.io.storage import filesystem, with_retries
from segpipe.sources.base import (
    SKIP_EXTENSION,
    SKIP_FOLDER_SEEN,
    SKIP_NOT_REGULAR,
    SKIP_UNLISTABLE,
    Skipped,
    uri_of,
)
from segpipe.sources.policy import protocols_of

GLOB_CHARS = "*?["
PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One listed file: its URI, its path on the filesystem, and the listing's metadata."""

    uri: str
    path: str
    info: dict[str, Any]


def has_glob(path: str) -> bool:
    return any(ch in path for ch in GLOB_CHARS)


def list_files(url: str, storage_options: dict[str, Any] | None = None, *,
               page_size: int = PAGE_SIZE, skipped: Skipped | None = None) -> Iterator[FileEntry]:
    """Files under a prefix, matching a glob, or the one file `url` names, sorted by key;
    what is met and not listed (see the module docstring) is counted in `skipped`."""
    skipped = Skipped() if skipped is None else skipped
    fs, path = filesystem(url, storage_options)
    if has_glob(path):
        yield from _glob(fs, url, path, page_size, skipped)
        return
    found = False
    for entry in _walk(fs, url, path.rstrip("/") + "/", page_size=page_size, skipped=skipped):
        found = True
        yield entry
    if not found and path and not path.endswith("/"):
        info = _file_info(fs, path, skipped)
        if info is not None:
            yield FileEntry(uri_of(url, path), path, info)


def _glob(fs: fsspec.AbstractFileSystem, url: str, pattern: str,
          page_size: int, skipped: Skipped) -> Iterator[FileEntry]:
    static = pattern[: min(pattern.find(ch) for ch in GLOB_CHARS if ch in pattern)]
    matcher = re.compile(glob_translate(pattern))
    rest = pattern[len(static):]
    # Without `**` a glob matches at a fixed depth: deeper folders need not be listed.
    depth = None if "**" in rest else rest.count("/")
    yield from _walk(fs, url, static, page_size=page_size, max_depth=depth, skipped=skipped,
                     matches=matcher.match)


def _walk(fs: fsspec.AbstractFileSystem, url: str, prefix: str, *, page_size: int,
          skipped: Skipped, max_depth: int | None = None,
          matches: Callable[[str], Any] | None = None) -> Iterator[FileEntry]:
    """Files whose path starts with `prefix` (a folder when it ends with "/") and that
    `matches`, sorted; a walker yields a non-regular file with None for its info, and it
    is counted here, once it is known to be wanted."""
    entries: Iterator[tuple[str, dict | None]]
    if _is_s3(fs):
        entries = _s3_pages(fs, prefix, page_size, delimited=max_depth == 0)
    elif isinstance(fs, LocalFileSystem):
        entries = _local_walk(prefix, max_depth, skipped)
    else:
        entries = _generic_walk(fs, prefix, max_depth, skipped)
    root = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    # A prefix that itself names a hidden entry ("raw/.cache/") asked for it.
    first = 1 if prefix[len(root):].startswith(".") else 0
    for path, info in entries:
        parts = path[len(root):].split("/")
        if max_depth is not None and len(parts) - 1 > max_depth:
            continue
        if any(part.startswith(".") for part in parts[first:]):
            continue
        if matches is not None and not matches(path):
            continue
        if info is None:
            skipped[SKIP_NOT_REGULAR] += 1
        else:
            yield FileEntry(uri_of(url, path), path, info)


def _wanted(name: str, start: str) -> bool:
    """An entry of a walked folder: it continues the prefix, and is not hidden unless the
    prefix named a hidden entry. Pruning here spares walking a `.git` or `.cache`."""
    return name.startswith(start) and (start.startswith(".") or not name.startswith("."))


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    # By protocol first: importing s3fs (aiobotocore, aiohttp) costs a local run most of a
    # second of CPU, while Ray starts beside the listing.
    if "s3" not in protocols_of(fs):
        return False
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - s3fs is a dependency, but keep other stores usable
        return False
    return isinstance(fs, S3FileSystem) and not fs.version_aware


def _s3_pages(fs: Any, prefix: str, page_size: int, *,
              delimited: bool) -> Iterator[tuple[str, dict]]:
    """ListObjectsV2 page by page: S3 returns keys in UTF-8 byte order, which is the
    order of Python strings, so no sorting is needed and one page is held at a time."""
    bucket, key, _ = fs.split_path(prefix)
    if prefix.endswith("/") and key:
        key = key.rstrip("/") + "/"  # a folder: "raw/", never "raw-2024/" too
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": page_size}
    if delimited:
        kwargs["Delimiter"] = "/"
    while True:
        page = with_retries(lambda: fs.call_s3("list_objects_v2", **kwargs),
                            what=f"s3://{bucket}/{key}")
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # folder markers are not files
                yield f"{bucket}/{obj['Key']}", {"size": obj.get("Size"), "ETag": obj.get("ETag"),
                                                 "LastModified": obj.get("LastModified")}
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _local_walk(prefix: str, max_depth: int | None,
                skipped: Skipped) -> Iterator[tuple[str, dict | None]]:
    folder, _, start = prefix.rpartition("/")
    if not os.path.isdir(folder or "/"):
        return
    yield from _local_dir(folder or "/", start, max_depth, set(), skipped)


def _local_dir(folder: str, start: str, depth: int | None, walked: set[tuple[int, int]],
               skipped: Skipped) -> Iterator[tuple[str, dict | None]]:
    """The files of `folder` and of the folders below it, sorted (None for the info of one
    that is not a regular file), walking each real folder once: `walked` holds the
    (device, inode) of every folder walked so far."""
    try:
        node = _node(os.stat(folder))
        if node in walked:
            skipped[SKIP_FOLDER_SEEN] += 1
            return
        with os.scandir(folder) as it:
            entries = [e for e in it if _wanted(e.name, start)]
    except (FileNotFoundError, NotADirectoryError):  # gone since it was listed
        return
    except PermissionError:
        skipped[SKIP_UNLISTABLE] += 1
        return
    walked.add(node)
    keyed = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False  # the stat below tells what it is
        # A folder sorts as "name/", as its keys do on an object store.
        keyed.append((entry.name + "/" if is_dir else entry.name, entry, is_dir))
    keyed.sort(key=lambda item: item[0])
    base = folder.rstrip("/")
    for _, entry, is_dir in keyed:
        if is_dir:
            if depth is None or depth > 0:
                yield from _local_dir(entry.path, "", None if depth is None else depth - 1,
                                      walked, skipped)
            continue
        try:
            st: os.stat_result | None = entry.stat()
        except OSError:  # vanished, or a dangling link
            st = None
        # Never list a FIFO, socket or device: reading one can block for ever.
        if st is None or not stat.S_ISREG(st.st_mode):
            yield f"{base}/{entry.name}", None
        else:
            yield f"{base}/{entry.name}", {"size": st.st_size, "mtime": st.st_mtime}


def _node(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _generic_walk(fs: fsspec.AbstractFileSystem, prefix: str, max_depth: int | None,
                  skipped: Skipped) -> Iterator[tuple[str, dict | None]]:
    folder, _, start = prefix.rpartition("/")
    yield from _generic_dir(fs, folder, start, max_depth, skipped)


def _generic_dir(fs: fsspec.AbstractFileSystem, folder: str, start: str,
                 depth: int | None, skipped: Skipped) -> Iterator[tuple[str, dict | None]]:
    try:
        listed = with_retries(lambda: fs.ls(folder, detail=True), what=folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    keyed = []
    for info in listed:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if not _wanted(name, start) or info["name"].rstrip("/") == folder.rstrip("/"):
            continue
        is_dir = info.get("type") == "directory"
        keyed.append((name + "/" if is_dir else name, info, is_dir))
    keyed.sort(key=lambda item: item[0])
    for _, info, is_dir in keyed:
        path = info["name"].rstrip("/")
        if is_dir:
            if depth is None or depth > 0:
                yield from _generic_dir(fs, path, "", None if depth is None else depth - 1,
                                        skipped)
        else:
            yield path, info if info.get("type", "file") == "file" else None


def _file_info(fs: fsspec.AbstractFileSystem, path: str,
               skipped: Skipped) -> dict[str, Any] | None:
    """The info of the one file `path` names; None for none (or a folder, listed already)."""
    try:
        info = with_retries(lambda: fs.info(path), what=path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    kind = info.get("type", "file")
    if kind not in ("file", "directory"):
        skipped[SKIP_NOT_REGULAR] += 1
    return info if kind == "file" else None


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion, left to right: `{0000..0099}` (integer ranges, zero-padded when
    written so, either direction) and `{a,b}`, nested or several in one pattern."""
    found = _first_brace(pattern)
    if found is None:
        return [pattern]
    start, end, parts = found
    head, body, tail = pattern[:start], pattern[start + 1: end], pattern[end + 1:]
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if numeric:
        lo, hi = numeric.group(1), numeric.group(2)
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + step, step)]
    elif len(parts) > 1:
        choices = [out for part in parts for out in expand_braces(part)]
    else:  # "{x}" is no pattern: keep it literally
        return [head + "{" + body + "}" + out for out in expand_braces(tail)]
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def _first_brace(pattern: str) -> tuple[int, int, list[str]] | None:
    """The first balanced `{...}`: its bounds and its body split at top-level commas."""
    start = pattern.find("{")
    while start != -1:
        depth, cut = 0, start + 1
        parts: list[str] = []
        for i in range(start, len(pattern)):
            ch = pattern[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return start, i, [*parts, pattern[cut:i]]
            elif ch == "," and depth == 1:
                parts.append(pattern[cut:i])
                cut = i + 1
        start = pattern.find("{", start + 1)
    return None


def expand_urls(url: str) -> list[str]:
    """The URLs a `::`-separated list of URLs and brace patterns names, in order."""
    return [out for part in url.split("::") if part.strip() for out in expand_braces(part.strip())]


def container_files(url: str, storage_options: dict[str, Any] | None,
                    suffixes: tuple[str, ...], *, may_be_folder: bool = False,
                    skipped: Skipped | None = None) -> Iterator[FileEntry]:
    """The files (tars, tables) `url` names, in order. A name with one of `suffixes` is
    taken as it is (reading it tells whether it exists) unless `may_be_folder` (a
    `table.parquet/` folder of parts); folders and globs are listed for `suffixes`, and
    the other files they hold are counted in `skipped`."""
    skipped = Skipped() if skipped is None else skipped
    for part in expand_urls(url):
        fs, path = filesystem(part, storage_options)
        named = not has_glob(path) and path.lower().endswith(suffixes)
        found = False
        if not named or may_be_folder:
            for entry in list_files(part, storage_options, skipped=skipped):
                if entry.path.lower().endswith(suffixes):
                    found = True
                    yield entry
                else:
                    skipped[SKIP_EXTENSION] += 1
        if named and not found:
            yield FileEntry(uri_of(part, path), path, {})
