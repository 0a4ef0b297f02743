"""Probing many files in order, on as many processes and threads as pay.

Reading a header is a few system calls plus some interpreter work per file, and both cost CPU
time when the files sit in the page cache: one interpreter then probes at most what one core
allows, and threads only contend for its GIL. So a large scan forks one worker process per usable
core (``ETPP_SCAN_PROCESSES`` sets the count; 1: none), each probing batches of paths in order.
Threads pay where the system calls wait instead (a network or parallel file system, a cold disk):
the GIL is released while a thread waits, so many files are in flight at once. A process times
batches on one thread and on many, keeps the faster, and looks again every few batches
(``ETPP_SCAN_THREADS`` fixes the count).

A batch is probed by :func:`~etpp_dali.data.headers.probe_batch`: its headers read into one
buffer (each folder opened once, its files by name) and walked together. The workers are forked:
they run only this probing (no torch, no DALI, no thread pool of the parent, which does not
survive a fork), and return columns.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterator, Sequence

from etpp_dali.data.headers import Piece, probe_batch, release_buffer
from etpp_dali.data.probe import ProbeColumns
from etpp_dali.util.threads import usable_cores

__all__ = ["Prober", "map_fastest", "probe_files", "scan_processes", "scan_threads"]

_BATCH = 2048             # files per timed batch, and per task of a worker process
_RECHECK = 16             # batches between two comparisons of the thread counts
_MAX_THREADS = 32
_MIN_FOR_PROCESSES = 16 * _BATCH  # fewer files are probed faster than worker processes start
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, threads): pools of this process


def scan_threads() -> int | None:
    """The thread count ``ETPP_SCAN_THREADS`` fixes, else ``None`` (chosen by timing)."""
    value = os.environ.get("ETPP_SCAN_THREADS")
    return max(1, int(value)) if value else None


def scan_processes() -> int:
    """Worker processes of a large scan: ``ETPP_SCAN_PROCESSES``, else the usable cores."""
    value = os.environ.get("ETPP_SCAN_PROCESSES")
    return max(1, int(value)) if value else usable_cores()


class Prober:
    """Probes the batches of files of one scan, in order, each batch as pieces ``(folder prefix,
    names)`` (see :func:`~etpp_dali.data.headers.probe_batch`): a large scan's worker processes are
    started once, for all its batches (``expected``: the files the scan will probe), and the
    caller builds the next batch while the workers probe the last (:meth:`submit` returns at
    once; its result is a callable that waits). Use it as a context manager."""

    def __init__(self, level: int, expected: int) -> None:
        self.level = level
        workers = scan_processes()
        self._pool: Any = None
        if workers > 1 and expected >= _MIN_FOR_PROCESSES:
            try:
                self._pool = _start_pool(workers)
            except (OSError, AssertionError) as exc:  # no fork here, or a daemon process (no children)
                print(f"etpp: scanning in one process ({exc})", file=sys.stderr)

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc: Any) -> None:
        release_buffer()  # probed here when there was no pool
        if self._pool is not None:
            self._pool.terminate()  # every result was collected (or the scan failed): nothing to wait for
            self._pool = None

    def submit(self, pieces: Sequence[Piece],
               progress: Callable[[int], None] | None = None) -> Callable[[], ProbeColumns]:
        """Start probing the files of ``pieces``; call the result for the probes (``progress(n)`` as
        batches end)."""
        tasks = list(_tasks(pieces, _BATCH))
        if self._pool is None:
            return lambda: ProbeColumns.joined([_probed(task, self.level, progress) for task in tasks])
        parts = self._pool.imap(partial(_probe_chunk, level=self.level), tasks)

        def collect() -> ProbeColumns:
            out: list[ProbeColumns] = []
            for part in parts:
                out.append(part)
                if progress is not None:
                    progress(len(part))
            return ProbeColumns.joined(out)
        return collect


def _start_pool(workers: int) -> Any:
    return multiprocessing.get_context("fork").Pool(workers)


def probe_files(paths: Sequence[str], level: int, progress: Callable[[int], None] | None = None) -> ProbeColumns:
    """``probe_path(p, level)`` of every path, in order, as columns; in worker processes when
    there are many; ``progress(n)`` after each batch of ``n`` files."""
    with Prober(level, len(paths)) as prober:
        return prober.submit([("", paths)], progress)()


def _tasks(pieces: Sequence[Piece], size: int) -> Iterator[list[Piece]]:
    """The pieces cut into tasks of ``size`` files (the last one shorter), in order."""
    task: list[Piece] = []
    count = 0
    for prefix, names in pieces:
        start = 0
        while start < len(names):
            take = min(len(names) - start, size - count)
            task.append((prefix, names[start:start + take]))
            count, start = count + take, start + take
            if count == size:
                yield task
                task, count = [], 0
    if task:
        yield task


def _probe_chunk(pieces: Sequence[Piece], level: int) -> ProbeColumns:
    files = sum(len(names) for _, names in pieces)
    return probe_batch(pieces, level, partial(map_fastest, batch=files // 8 or 1))


def _probed(pieces: Sequence[Piece], level: int, progress: Callable[[int], None] | None) -> ProbeColumns:
    out = _probe_chunk(pieces, level)
    if progress is not None:
        progress(len(out))
    return out


_RATES: dict[int, dict[int, float]] = {}  # process id -> files/sec last timed per thread count
_BATCHES: dict[int, int] = {}  # process id -> batches mapped so far (calls are short: the phase spans them)


def map_fastest(func: Callable[[Any], Any], items: Sequence[Any], *, batch: int,
                progress: Callable[[int], None] | None = None) -> list[Any]:
    """``[func(x) for x in items]``, in order, batch by batch on one thread or many, whichever
    was faster when last timed in this process (see the module docstring)."""
    fixed = scan_threads()
    many = fixed or min(_MAX_THREADS, 4 * usable_cores())
    pid = os.getpid()
    rate = _RATES.setdefault(pid, {1: 0.0, many: 0.0})
    out: list[Any] = []
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        phase = _BATCHES.get(pid, 0) % _RECHECK
        _BATCHES[pid] = _BATCHES.get(pid, 0) + 1
        if fixed:
            threads = fixed
        elif phase < 2 and len(items) - start >= batch:  # time one batch on each count
            threads = (1, many)[phase]
        else:
            threads = max(rate, key=rate.get)
        began = time.perf_counter()
        out += _map_threads(func, part, threads)
        rate[threads] = len(part) / max(1e-9, time.perf_counter() - began)
        if progress is not None:
            progress(len(part))
    return out


def _map_threads(func: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    """``[func(x) for x in items]`` in ``threads`` contiguous parts, on this process's own pool."""
    if threads < 2 or len(items) < 2:
        return [func(x) for x in items]
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(threads, thread_name_prefix="etpp-scan")
    step = -(-len(items) // threads)
    parts = [items[i:i + step] for i in range(0, len(items), step)]
    return [y for part in _POOLS[key].map(lambda p: [func(x) for x in p], parts) for y in part]
