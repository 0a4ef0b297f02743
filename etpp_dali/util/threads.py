"""Small thread helpers shared by the scans, the Python DALI operators and the loaders.

No torch or DALI import: ``etpp check-data`` uses them too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

__all__ = ["map_threads", "usable_cores"]

_POOLS: dict[int, ThreadPoolExecutor] = {}


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def map_threads(func: Callable[[Any], Any], items: Sequence[Any], *, workers: int, min_items: int) -> list[Any]:
    """``[func(x) for x in items]``, split into ``workers`` contiguous chunks on a shared pool
    when there are at least ``min_items``; ``func`` should release the GIL (I/O, torch, OpenCV,
    Pillow) for this to pay."""
    if workers < 2 or len(items) < min_items:
        return [func(x) for x in items]
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="etpp")
    step = -(-len(items) // workers)
    chunks = [items[i:i + step] for i in range(0, len(items), step)]
    return [y for part in pool.map(lambda chunk: [func(x) for x in chunk], chunks) for y in part]
