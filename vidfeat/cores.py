"""How many CPU cores this process may use: the one rule for thread pools and worker counts;
and the malloc setting that keeps the memory of a long extraction flat."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cgroup's or taskset's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cores_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of :func:`available_cores` (at least 1), so that W
    workers on one machine share its cores instead of oversubscribing them."""
    return max(1, available_cores() // max(1, int(workers)))


def fixed_mmap_threshold(nbytes: int = 32 << 20) -> None:
    """glibc's malloc raises its mmap threshold each time a large block is freed; after that,
    large temporaries (a batch's activations, the tensors decoding workers hand over) come from
    the heap, which fragments and is not given back: `extract audio --grid snippets` of an hour
    grew from 1.0 to 1.9 GB (bench_untrimmed). A fixed threshold (which also turns the dynamic
    one off) keeps blocks of ``nbytes`` and more mmap'd, returned when freed; 32 MiB cost no
    speed there (4 MiB: 8 %). The command line sets it at start; glibc only, else nothing."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
