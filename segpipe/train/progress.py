"""The fine-tuning progress bar: epochs, steps/s, loss and ETA.

The first training worker posts its counters to a small Ray actor; the driver polls it and
draws one line. Posting is fire-and-forget, so a slow terminal never slows training.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.latest: dict[str, Any] = {}

    def post(self, counters: dict[str, Any]) -> None:
        self.latest = counters

    def read(self) -> dict[str, Any]:
        return self.latest


def format_line(c: dict[str, Any]) -> str:
    """epoch 2/10  step 35/120  3.1 steps/s  loss 1.234  ETA 0:45"""
    eta = c.get("eta_s")
    shown = "--:--" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}"
    return (f"epoch {c['epoch']}/{c['epochs']}  step {c['step']}/{c['steps']}  "
            f"{c['steps_per_s']:.2f} steps/s  loss {c['loss']:.3f}  ETA {shown}")


class ProgressPrinter:
    """A thread that redraws the line while training runs."""

    def __init__(self, board: Any, *, enabled: bool, interval: float = 1.0) -> None:
        self.board, self.enabled, self.interval = board, enabled, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._shown = ""

    def __enter__(self) -> ProgressPrinter:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
            if self._shown:
                sys.stderr.write("\n")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                counters = ray.get(self.board.read.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a missed redraw is no error
                continue
            if counters:
                line = format_line(counters)
                if line != self._shown:
                    sys.stderr.write("\r" + line.ljust(len(self._shown)))
                    sys.stderr.flush()
                    self._shown = line


def post(board: Any, counters: dict[str, Any]) -> None:
    if board is not None:
        board.post.remote(counters)


def eta_seconds(done_steps: int, total_steps: int, steps_per_s: float, elapsed: float,
                budget_s: float | None) -> float | None:
    """Time left: to the last planned step or to the time budget, whichever comes first."""
    if steps_per_s <= 0:
        return None
    left = (total_steps - done_steps) / steps_per_s
    return left if budget_s is None else max(0.0, min(left, budget_s - elapsed))


def now() -> float:
    return time.monotonic()
