"""A fault-injecting HTTP proxy for tests, in front of an S3 endpoint.

Each request is forwarded as it came (method, path, headers, body) and the response
returned as it came, except that, at a set rate drawn from a seeded generator, the proxy
instead answers 500 InternalError or 503 SlowDown (with S3's XML error body), drops the
connection before or after forwarding, cuts the response body short, or delays it.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("500", "503", "drop", "lost-reply", "truncate", "delay")
# Per hop, not part of the request: the proxy sends the body whole, with its length.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "expect", "content-length"})

ERRORS = {
    "500": (500, "Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


class FaultProxy:
    """`with FaultProxy(upstream, rate=0.2) as proxy:` point clients at `proxy.url`."""

    def __init__(self, upstream: str, *, rate: float, seed: int = 0,
                 faults: tuple[str, ...] = FAULTS, delay_s: float = 0.3) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.faults = faults
        self.delay_s = delay_s
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self) -> str | None:
        """The fault for the next request, or None to forward it."""
        with self._lock:
            if self._rng.random() >= self.rate:
                self.forwarded += 1
                return None
            fault = self._rng.choice(self.faults)
            self.injected[fault] += 1
            return fault


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_HEADERS:
                        conn.putheader(name, value)
                if body or self.command in ("PUT", "POST"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                return resp.status, resp.reason, resp.getheaders(), resp.read()
            finally:
                conn.close()

        def _reply(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                   *, cut: bool = False) -> None:
            self.send_response_only(status, reason)
            length = None
            for name, value in headers:
                if name.lower() == "content-length":
                    length = value
                elif name.lower() not in HOP_HEADERS:
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.wfile.flush()
                self._drop()

        def _error(self, fault: str) -> None:
            status, reason, code, message = ERRORS[fault]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>"
                    ).encode()
            self._reply(status, reason, [("Content-Type", "application/xml")], body)

        def _proxy(self) -> None:
            body = self._body()
            fault = proxy.draw()
            if fault in ERRORS:
                self._error(fault)
                return
            if fault == "drop":
                self._drop()
                return
            if fault == "delay":
                time.sleep(proxy.delay_s)
            status, reason, headers, data = self._forward(body)
            if fault == "lost-reply":  # the request took effect; the client never hears so
                self._drop()
                return
            self._reply(status, reason, headers, data, cut=fault == "truncate" and len(data) > 1)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _proxy

    return Handler
