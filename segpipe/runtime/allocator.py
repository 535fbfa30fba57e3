"""The C allocator of a process that runs the model: freed memory stays mapped for the next batch.

By default glibc hands a freed block above its mmap threshold straight back to the kernel,
trims a heap's free top above its trim threshold, and unmaps a thread's extra heap as soon as
it is empty. A forward allocates and frees tens of megabytes of activations a batch, on the
thread of the shard call, so every batch faulted its pages in again, zeroed by the kernel: on
the demo model, some 850 minor page faults per 640x480 image in a worker, and about 1.2 ms of
kernel time in a 7-8 ms forward. With the thresholds below, 16. The process's memory stays at
its peak working set, which it reaches again every batch anyway.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt's parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heaps: glibc's largest on 64-bit (half a thread heap).
MMAP_THRESHOLD = 32 << 20
# Free memory at a heap's top that stays mapped: a few batches' worth of activations.
TRIM_THRESHOLD = 256 << 20
# Spare room a heap keeps: as large as a thread's heap (64 MiB), so that an empty extra heap
# of a thread's arena is kept rather than unmapped (glibc deletes it unless the pad needs it).
TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Set this process's allocator thresholds; returns whether it took them (False where the
    C library is not glibc, as on macOS or musl, which leaves their allocator as it is)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # All three: setting one stops glibc adapting the others, and a default left in place (a
    # 128 KiB threshold) would give memory back after nearly every batch.
    return all([mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                mallopt(M_TOP_PAD, TOP_PAD)])
