"""The process heap: glibc keeps memory it freed, and these hand it back or keep it on purpose.

glibc raises its threshold for serving a large allocation from the heap (rather than its own mapping) to the
largest block freed so far, so a loop whose steps allocate and free large temporaries while keeping small objects
(a batch's predictions, kept for the epoch's metrics) ends up with those small objects spread over a heap that
cannot shrink: the heap grows to the step's peak times the spread. Measured in training from a 50 M-event dataset:
0.35-0.5 GB above the loop's working set within the first seconds of validation, gone with a fixed threshold
(at 2.7 times the wall time) or with :func:`trim_heap` every 32 batches (wall time 176 s against 172 s without).
"""

from __future__ import annotations

import ctypes
import gc

import pyarrow as pa


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release_memory() -> None:
    """Hand memory freed by the last step back to the system before the next one allocates, so peaks
    do not stack up across partitions (Arrow keeps freed buffers in its own pool otherwise)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    trim_heap()


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


def reuse_freed_memory() -> None:
    """Keep freed blocks in the heap for the next batch instead of unmapping them.

    glibc hands large freed blocks straight back to the OS, so every batch faults its pages in afresh;
    on a VM that costs more than the arithmetic (inference on the benchmark log: 49 s -> 25 s). Memory
    then stays at its high-water mark until :func:`release_memory` trims it between partitions.

    One heap for every thread: the scoring streams (:func:`churnformer.serving.predictor.stream_layout`)
    otherwise get a glibc arena each, whose memory is not reused across partitions; on the CRM-shaped
    benchmark log that faulted in 0.6-2.4 M pages instead of 0.3 M and cost 2-4 s of 35.
    """
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, 256 * 2**20)
        _LIBC.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        _LIBC.mallopt(M_ARENA_MAX, 1)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _glibc()
