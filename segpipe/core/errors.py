"""The one base of segpipe's own errors.

Every error segpipe raises on purpose (bad input, a refused destination, a failed job)
derives from `SegpipeError`, keeping the builtin base it had (ValueError, RuntimeError,
PermissionError), so callers that catch those still do. The CLI prints a `SegpipeError` as
a message; anything else is unexpected and keeps its traceback under `-v`.
"""

from __future__ import annotations


class SegpipeError(Exception):
    """An error segpipe raises on purpose; its message says what to fix."""
