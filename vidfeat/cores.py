"""How many CPU cores this process may use: the one rule for thread pools and worker counts."""

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
