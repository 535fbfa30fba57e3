"""Job progress on the driver: a bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import time
from typing import IO, Any

from tqdm import tqdm

from segpipe.core.items import CommitMarker

log = logging.getLogger("segpipe.app.progress")


class Progress:
    def __init__(self, *, total: int, initial: int = 0, enabled: bool = True,
                 stream: IO[str] | None = None, log_every_s: float = 30.0) -> None:
        self.total = total
        self.done = initial
        self.errors = 0
        self.processed = 0  # images done by this session, for its throughput
        self.started = time.monotonic()
        self.log_every_s = log_every_s
        self._last_log = self.started
        interactive = enabled and stream is not None and stream.isatty()
        self.bar = tqdm(total=total, initial=initial, unit="img", file=stream, dynamic_ncols=True,
                        smoothing=0.1) if interactive else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        self._log(force=True)

    def update(self, marker: CommitMarker) -> None:
        """Count a committed shard."""
        self.done += marker.images
        self.processed += marker.images
        self.errors += marker.errors
        if self.bar is not None:
            self.bar.set_postfix(errors=self.errors, refresh=False)
            self.bar.update(marker.images)
        else:
            self._log()

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.bar is not None or not (force or now - self._last_log >= self.log_every_s):
            return
        self._last_log = now
        rate = self.processed / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%d/%d images (%.1f img/s, ETA %s, %d errors)", self.done, self.total, rate,
                 "-" if eta == float("inf") else f"{eta:.0f}s", self.errors)
