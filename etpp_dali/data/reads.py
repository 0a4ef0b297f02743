"""Reading a batch of encoded images: one buffer, one system call per file, reused buffers.

The loaders hand DALI each batch's encoded bytes. Read one file at a time into a fresh array
(``np.fromfile``), a batch costs, per image: a Python open, a seek and size query, an allocation
whose pages the kernel then faults in one by one, and the copy out of the page cache. Here a
batch is read into one buffer (``os.readv`` into a view of it, the size from ``fstat`` on the open
file or from the tar index), and the buffers are recycled by the caller (:class:`BufferPool`), so
what remains is the open, the copy and the close. ``os.readv`` releases the GIL, so batches read
on worker threads overlap the caller's work (see :class:`etpp_dali.loader.plans.Feed`).

The bytes are those ``np.fromfile`` (or, for a tar member, a read of its range) gives: the
same images, bit for bit, whichever way they are read.

Files (not tar members) can also be read by the DALI graph itself (``fn.io.file.read``, on
DALI's C++ threads, no GIL, one copy out of the page cache): the feed then hands it each file's
path as bytes (:func:`path_batch`).
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

import numpy as np

from etpp_dali.data.records import RecordTable

__all__ = ["BufferPool", "path_batch", "read_batch"]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_FIRST_BYTES = 1 << 20  # a pool's first buffer; it grows (doubling) to the largest batch


class BufferPool:
    """Byte buffers handed out by size and given back once their contents were used (copied).

    ``take(n)`` returns a free buffer of at least ``n`` bytes (the smallest that fits), else a new
    one with some room to spare, so a loader's buffers settle at a few batches' worth and their
    pages stay mapped. Thread-safe: batches are read on worker threads."""

    def __init__(self, spare: float = 1.25) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._spare = spare
        self.hint = 0  # the largest batch read so far, in bytes: what the next one is likely to need

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fitting = [k for k, b in enumerate(self._free) if len(b) >= nbytes]
            if fitting:
                return self._free.pop(min(fitting, key=lambda k: len(self._free[k])))
        return np.empty(max(1, int(nbytes * self._spare)), dtype=np.uint8)

    def give(self, buffer: np.ndarray | None) -> None:
        if buffer is not None:
            with self._lock:
                self._free.append(buffer)

    def __len__(self) -> int:
        return len(self._free)


def _fill(fd: int, view: np.ndarray, offset: int | None) -> int:
    """Read into ``view`` until it is full or the file ends; the bytes read."""
    done = 0
    while done < len(view):
        part = view[done:]
        got = os.readv(fd, [part]) if offset is None else os.preadv(fd, [part], offset + done)
        if got == 0:
            break
        done += got
    return done


def read_batch(table: RecordTable, indices: Sequence[int] | np.ndarray,
               pool: BufferPool | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The encoded bytes of images ``indices`` of ``table`` (views into one buffer), and the buffer.

    Give the buffer back to ``pool`` once the views were copied (DALI copies its external
    source's input when it takes it). A file's size is read from its open descriptor (or the tar
    index), so a file that changed since the scan is read as it is now, as a fresh read would."""
    pool = pool if pool is not None else BufferPool(spare=1.0)
    buffer = pool.take(pool.hint or _FIRST_BYTES)
    spans, end, open_fds = [], 0, {}
    try:
        for i in (int(i) for i in indices):
            if table.offsets is None:
                fd = os.open(table.path(i), _OPEN_FLAGS)
                try:
                    size = os.fstat(fd).st_size
                    buffer = _room(pool, buffer, end, size)
                    got = _fill(fd, buffer[end:end + size], None)
                finally:
                    os.close(fd)
            else:  # tar members: one open per shard per batch
                path, offset, size = table.group_path(i), int(table.offsets[i]), int(table.nbytes[i])
                fd = open_fds.get(path)
                if fd is None:
                    fd = open_fds[path] = os.open(path, _OPEN_FLAGS)
                buffer = _room(pool, buffer, end, size)
                got = _fill(fd, buffer[end:end + size], offset)
            spans.append((end, got))
            end += size
    except BaseException:
        pool.give(buffer)
        raise
    finally:
        for fd in open_fds.values():
            os.close(fd)
    pool.hint = max(pool.hint, end)
    return [buffer[a:a + n] for a, n in spans], buffer


def _room(pool: BufferPool, buffer: np.ndarray, used: int, more: int) -> np.ndarray:
    """``buffer``, or a larger one holding its first ``used`` bytes, with room for ``more``."""
    if used + more <= len(buffer):
        return buffer
    larger = pool.take(max(2 * len(buffer), used + more))
    larger[:used] = buffer[:used]
    return larger  # the smaller one is dropped: buffers grow only until they hold the largest batch


def path_batch(table: RecordTable, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The paths of images ``indices`` (files, not tar members) as uint8 arrays of their bytes
    (as the OS takes them), what DALI's ``fn.io.file.read`` reads."""
    if table.offsets is not None:
        raise ValueError("tar members have no path of their own: read them with read_batch")
    prefixes = table.prefix_bytes
    names, starts, ends, groups = table.names, table.name_start, table.name_end, table.groups
    return [np.frombuffer(prefixes[groups.item(i)] + names[starts.item(i):ends.item(i)].tobytes(), dtype=np.uint8)
            for i in (int(i) for i in indices)]
