"""The fixed-cost phases of a run (start-up, planning, worker start, merge), timed for the run
summary: what a user waits for that is not annotating images."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def process_age_s() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included), where
    the OS says; None elsewhere."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as stat:
            # Field 22, after the parenthesized command name: start time in clock ticks since boot.
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            up = float(uptime.read().split()[0])
        return max(0.0, up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Wall seconds per named phase, on the driver; a phase may run beside others."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        age = process_age_s()
        if age is not None:  # interpreter start and imports, before the job began
            self.seconds["process_start_s"] = age

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def timed(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, timed as phase `name`."""
        with self.phase(name):
            return fn(*args)

    def add(self, name: str, seconds: float) -> None:
        key = f"{name}_s"
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def since_start(self, name: str) -> None:
        """Record `name` as the time from the job's start to now."""
        self.seconds[f"{name}_s"] = time.perf_counter() - self.started

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}
