"""Probing many files in order, on as many threads as pay.

Reading a header is a few system calls plus some interpreter work per file. Threads pay when the
system calls wait (a network or parallel file system, a cold disk): the GIL is released while a
thread waits, so many files are in flight at once. When the files sit in the page cache the
interpreter itself is the limit and more threads only contend for the GIL, which makes the scan
slower. So the scan times batches on one thread and on many, keeps the faster, and looks again
every few batches. ``ETPP_SCAN_THREADS`` fixes the count instead.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from etpp_dali.data.probe import Probe, probe_path
from etpp_dali.util.threads import map_threads, usable_cores

__all__ = ["map_fastest", "probe_files", "scan_threads"]

_BATCH = 2048          # files per timed batch
_RECHECK = 16          # batches between two comparisons of the thread counts
_MAX_THREADS = 32


def scan_threads() -> int | None:
    """The thread count ``ETPP_SCAN_THREADS`` fixes, else ``None`` (chosen by timing)."""
    value = os.environ.get("ETPP_SCAN_THREADS")
    return max(1, int(value)) if value else None


def probe_files(paths: Sequence[str], level: int, progress: Callable[[int], None] | None = None) -> list[Probe]:
    """``[probe_path(p, level) for p in paths]`` on the thread count that reads fastest;
    ``progress(n)`` after each batch of ``n`` files."""
    return map_fastest(lambda p: probe_path(p, level), paths, batch=_BATCH, progress=progress)


def map_fastest(func: Callable[[Any], Any], items: Sequence[Any], *, batch: int,
                progress: Callable[[int], None] | None = None) -> list[Any]:
    """``[func(x) for x in items]``, in order, batch by batch on one thread or many, whichever
    was faster when last timed (see the module docstring)."""
    fixed = scan_threads()
    many = fixed or min(_MAX_THREADS, 4 * usable_cores())
    rate = {1: 0.0, many: 0.0}
    out: list[Any] = []
    for k, start in enumerate(range(0, len(items), batch)):
        part = items[start:start + batch]
        phase = k % _RECHECK
        if fixed:
            threads = fixed
        elif phase < 2 and len(items) - start >= batch:  # time one batch on each count
            threads = (1, many)[phase]
        else:
            threads = max(rate, key=rate.get)
        began = time.perf_counter()
        out += map_threads(func, part, workers=threads, min_items=2)
        rate[threads] = len(part) / max(1e-9, time.perf_counter() - began)
        if progress is not None:
            progress(len(part))
    return out
