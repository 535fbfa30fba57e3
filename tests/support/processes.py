"""The processes of this test process's own Ray: tests run side by side, each with its own
local Ray, and must never touch another's workers."""

from __future__ import annotations

import psutil


def shard_workers() -> dict[int, psutil.Process]:
    """The shard workers of the Ray this process started, by pid."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("ShardWorker" in part for part in proc.cmdline()):
                found[proc.pid] = proc
        except psutil.Error:  # ended meanwhile
            continue
    return found
