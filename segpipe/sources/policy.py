"""What a list of URIs (a manifest, a URI table) may make workers read.

Such a list often comes from another party than the one running the job, and its URIs are
read with the workers' network and files: on a cloud node, an `http://169.254.169.254/...`
line would read the instance metadata service, credentials included. So by default:

- a URI's scheme must be one of the list's own filesystem (a list on S3 may name s3://
  objects, a local list local files), an object store's (s3, gs) or https;
  `--allow-uri-schemes` adds others (http, file, ...). Local files are read only for a
  local list, unless `file` is added;
- every address an http(s) host resolves to, when the worker reads it, must be public:
  loopback, private, link-local (the metadata service), shared and reserved addresses are
  refused, unless `--allow-private-hosts`. The HTTP client checks each connection it makes
  too, so that neither a redirect nor a name that resolves elsewhere by then gets through.

A refused URI is an errors row naming it and the flag that would allow it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol

from segpipe.core.errors import SegpipeError

SAFE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "https"})
HTTP_SCHEMES = frozenset({"http", "https"})
LOCAL_SCHEME = "file"
PRIVATE_HOSTS_FLAG = "--allow-private-hosts"


class RefusedUri(SegpipeError, PermissionError):
    """A URI that the list naming it may not make a worker read."""


def scheme_of(uri: str) -> str:
    """The URI's scheme, with a plain path (and fsspec's `local://`) as `file`."""
    protocol, _ = split_protocol(uri)
    return LOCAL_SCHEME if protocol in (None, "file", "local") else protocol.lower()


def protocols_of(fs: fsspec.AbstractFileSystem | type[fsspec.AbstractFileSystem],
                 ) -> tuple[str, ...]:
    """The protocols a filesystem (or its class) answers to (s3fs: s3 and s3a): by these, not
    by class, a caller tells stores apart without importing their clients."""
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def schemes_of_filesystem(url: str) -> frozenset[str]:
    """The schemes of the filesystem `url` is on: its own and its aliases (s3 and s3a)."""
    scheme = scheme_of(url)
    try:
        aliases = protocols_of(fsspec.get_filesystem_class(scheme))
    except (ImportError, ValueError):  # a scheme fsspec does not know reads nothing anyway
        return frozenset({scheme})
    return frozenset({scheme, *(LOCAL_SCHEME if p == "local" else p for p in aliases)})


def is_public(address: str) -> bool:
    """Whether an IP address is a public, unicast one (IPv4-mapped IPv6 as its IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refused_address(address: str, how: str) -> RefusedUri:
    return RefusedUri(f"not read: {how} {address}, a loopback, private or link-local address; "
                      f"{PRIVATE_HOSTS_FLAG} allows it")


def check_host(host: str, port: int | None) -> None:
    """Refuse `host` unless every address it resolves to (now, on this worker) is public."""
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        if not is_public(host):
            raise _refused_address(host, "the host is")
        return
    infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    for address in sorted({str(info[4][0]) for info in infos}):
        if not is_public(address):
            raise _refused_address(address, f"{host} resolves to")


@dataclass(frozen=True)
class UriPolicy:
    """The schemes a list's URIs may use, and whether their http(s) hosts may be private."""

    schemes: frozenset[str]
    private_hosts: bool = False

    @classmethod
    def for_list(cls, list_urls: Iterable[str], *, extra_schemes: Iterable[str] = (),
                 private_hosts: bool = False) -> UriPolicy:
        """The policy for the URIs listed in the files at `list_urls`."""
        own = frozenset().union(*(schemes_of_filesystem(url) for url in list_urls))
        extra = {s.strip().lower() for s in extra_schemes if s.strip()}
        return cls(SAFE_SCHEMES | own | extra, private_hosts)

    def check(self, uri: str) -> None:
        """Raise RefusedUri, saying why and which flag would allow it, unless `uri` may be read."""
        scheme = scheme_of(uri)
        if scheme not in self.schemes:
            what = "local files" if scheme == LOCAL_SCHEME else f"{scheme}:// URIs"
            raise RefusedUri(f"not read: this list may not name {what} (it may name "
                             f"{', '.join(sorted(self.schemes))}); --allow-uri-schemes "
                             f"{scheme} allows it")
        if scheme in HTTP_SCHEMES and not self.private_hosts:
            parts = urlsplit(uri)
            check_host(parts.hostname or "", parts.port)

    def http_options(self) -> dict[str, Any]:
        """fsspec options for http(s) reads: a client that checks every connection's address."""
        return {} if self.private_hosts else {"get_client": _public_only_client}


async def _public_only_client(**kwargs: Any) -> Any:
    """An aiohttp session that connects to public addresses only: the check sits where the
    socket is made, so it covers redirects and names resolved again, not just the URI."""
    import aiohttp

    connector = aiohttp.TCPConnector(socket_factory=_public_socket)
    return aiohttp.ClientSession(connector=connector, **kwargs)


def _public_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    family, kind, proto, _, address = addr_info
    if not is_public(str(address[0])):
        # With an errno, so that aiohttp's connection error shows this message.
        reason = _refused_address(str(address[0]), "a connection (a redirect?) went to")
        raise RefusedUri(errno.EACCES, str(reason))
    return socket.socket(family, kind, proto)
