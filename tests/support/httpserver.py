"""A tiny real HTTP server on 127.0.0.1 for tests of what sources read over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 2**16


@dataclass
class Served:
    """What the server holds (path -> body) and what it did: requests seen, bytes sent."""

    files: dict[str, bytes]
    url: str = ""
    requests: list[str] = field(default_factory=list)
    bytes_sent: int = 0


@contextmanager
def http_server(files: dict[str, bytes], *,
                before_reply: Callable[[str], None] | None = None) -> Iterator[Served]:
    """Serve `files` on 127.0.0.1, ignoring Range headers (as many servers do) and writing
    bodies a chunk at a time, so that `bytes_sent` shows how much a client took.
    `before_reply(path)` runs before each reply: a slow server, where it waits."""
    served = Served(files)

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - the name http.server calls
            self._headers()

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            body = self._headers()
            try:
                for start in range(0, len(body or b""), CHUNK):
                    self.wfile.write(body[start:start + CHUNK])
                    served.bytes_sent += len(body[start:start + CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client had enough

        def _headers(self) -> bytes | None:
            served.requests.append(f"{self.command} {self.path}")
            if before_reply is not None:
                before_reply(self.path)
            body = served.files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            return body

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
