"""WebDataset shards: uncompressed `.tar` files of samples.

SRC names the shards: one `.tar`, a brace pattern (`shard-{0000..0099}.tar`), a
`::`-separated list of either, or a folder/glob whose `.tar` files are taken in key
order. As in WebDataset, consecutive members with the same key (the member path up to
the first dot of its basename) form a sample; the sample's first member whose extension
is an image extension (`jpg`, `png`, `webp`, ...; not `seg.png`) is its image and is
annotated. Other members (labels, metadata, masks) are not images and are skipped; files
of a listed folder that are not `.tar` files are counted as skipped keys. A member bigger
than the byte limit is an errors row, and is not read.

Identity: `uri` is the tar's URI, `member` the image member's name. Planning reads tar
headers only; a worker reads each tar of its shard once, front to back. A tar that cannot
be read to its end (missing, corrupt, truncated) is planned as what could be read plus
one placeholder, and every image that then cannot be read becomes an errors row.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from itertools import groupby
from typing import IO, Any

from segpipe.core.concurrency import ordered_map
from segpipe.core.identity import image_id
from segpipe.core.items import ImageRef
from segpipe.io.storage import filesystem, with_retries
from segpipe.sources.base import (
    DEFAULT_MAX_IMAGE_BYTES,
    UNREADABLE,
    Fetched,
    Scan,
    Skipped,
    fetch_scanned,
    plan_containers,
    too_large,
)
from segpipe.sources.files import IMAGE_EXTENSIONS, version_of
from segpipe.sources.listing import FileEntry, container_files

TAR_SUFFIXES = (".tar",)
IMAGE_SUFFIXES = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS)
BLOCK_SIZE = 8 * 2**20  # read ahead: members are small, so seeks mostly land in the block

_KEY_AND_EXT = re.compile(r"^((?:.*/|)[^./][^/.]*)\.([^/]*)$")


def split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name by WebDataset's rule; None for names without one."""
    match = _KEY_AND_EXT.match(name)
    return (match.group(1), match.group(2)) if match else None


def scan_tar(f: IO[bytes]) -> Generator[tarfile.TarInfo, None, None]:
    """The members of an uncompressed tar, from a seekable file. Raises `tarfile.TarError`
    when the archive ends in anything but its end-of-archive padding: `tarfile` would stop
    there silently, and what follows would be lost without a word."""
    with tarfile.open(fileobj=f, mode="r:") as tar:
        while (info := tar.next()) is not None:
            yield info
        if not _only_padding(f, tar.offset):
            raise tarfile.ReadError("data after the last readable member is not a tar header")


def _only_padding(f: IO[bytes], offset: int) -> bool:
    f.seek(offset)
    while chunk := f.read(65536):
        if chunk.count(0) != len(chunk):
            return False
    return True


def image_members(members: Iterator[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
    """The image member of each sample, in tar order."""
    current_key, has_image = None, False
    seen: set[str] = set()
    for info in members:
        split = split_member(info.name) if info.isfile() else None
        if split is None:
            continue
        key, ext = split
        if key != current_key:
            current_key, has_image = key, False
        # A name twice in one tar would give two images one id: the first one counts.
        if has_image or ext.lower() not in IMAGE_SUFFIXES or info.name in seen:
            continue
        seen.add(info.name)
        has_image = True
        yield info


@dataclass
class TarShards:
    """Images inside WebDataset `.tar` shards."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    list_threads: int = 8  # tars whose headers are read at once while planning
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def list_images(self, *, skipped: Skipped | None = None) -> Iterator[ImageRef]:
        tars = container_files(self.url, self.storage_options, TAR_SUFFIXES, skipped=skipped)
        listed = ordered_map(self._members, tars, threads=self.list_threads)
        return plan_containers(((tar.uri, _refs(tar, *found)) for tar, found in listed),
                               url=self.url)

    def _members(self, tar: FileEntry) -> tuple[list[str], BaseException | None]:
        """Names of the image members of one tar, and the error that ended reading early."""
        fs, path = filesystem(tar.uri, self.storage_options)
        names: list[str] = []

        def scan() -> tarfile.TarError | None:
            names.clear()
            try:
                with fs.open(path, "rb", block_size=BLOCK_SIZE) as f:
                    names.extend(info.name for info in image_members(scan_tar(f)))
            except tarfile.TarError as exc:  # the bytes are bad: reading again won't help
                return exc
            return None

        try:
            return names, with_retries(scan, what=tar.uri)
        except Exception as exc:  # noqa: BLE001 - becomes a placeholder, then an errors row
            return names, exc

    def fetch(self, refs: Sequence[ImageRef], *, threads: int = 8) -> Fetched:
        # A shard covers a few tars, each read once front to back; reads within a tar are
        # sequential, so `threads` has nothing to parallelize here.
        for uri, group in groupby(refs, key=lambda ref: ref.uri):
            batch = list(group)
            keys = [None if ref.member == UNREADABLE else ref.member for ref in batch]
            yield from fetch_scanned(batch, keys, self._scanner(uri, set(keys) - {None},
                                                                to_end=None in keys))

    def _scanner(self, uri: str, wanted: set[Any], *, to_end: bool) -> Scan:
        """Reads the tar up to its last wanted member; to its end only for a placeholder,
        whose error is the one found there (a shard's images are a slice of the tar)."""
        fs, path = filesystem(uri, self.storage_options)

        def scan(skip: set[Any]) -> Iterator[tuple[Any, bytes | BaseException]]:
            left = wanted - skip
            if not left and not to_end:
                return
            with fs.open(path, "rb", block_size=BLOCK_SIZE) as f, closing(scan_tar(f)) as members:
                for info in members:
                    if info.name in left:
                        left.discard(info.name)
                        yield info.name, _read_data(f, info, self.max_image_bytes)
                        if not left and not to_end:
                            return

        return scan


def _refs(tar: FileEntry, names: list[str], error: BaseException | None) -> Iterator[ImageRef]:
    version = version_of(tar.info) if tar.info else None
    yield from (ImageRef(image_id(tar.uri, name), tar.uri, name, version) for name in names)
    if error is not None:
        raise error


def _read_data(f: IO[bytes], info: tarfile.TarInfo, max_bytes: int) -> bytes | BaseException:
    if info.issparse():
        return tarfile.ReadError("sparse tar members are not supported")
    if info.size > max_bytes:  # the header tells: no need to read it to refuse it
        return too_large(info.size, max_bytes)
    f.seek(info.offset_data)
    data = f.read(info.size)
    if len(data) != info.size:
        return tarfile.ReadError("unexpected end of data")
    return data
