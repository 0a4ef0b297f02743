"""One builder per index: an exclusive lock on a file beside it, with a timeout and a clear message.

The processes of a node (and, where the cache folder is on a shared file system that supports
``flock``, of every node) that find an index missing or stale queue on this lock: the first one
builds the index, the others wait, then find the new index fresh and map it. Nothing here needs
``torch.distributed``. The kernel drops a lock when its holder dies, so a crashed builder never
blocks the others; the waiters then build it themselves.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from etpp_dali.data.records import DataError

__all__ = ["index_lock", "lock_timeout"]

_REPORT_EVERY = 30.0  # seconds between "still waiting" lines


def lock_timeout() -> float:
    """How long a process waits for another's index build (``ETPP_INDEX_TIMEOUT`` seconds; 2 h)."""
    return float(os.environ.get("ETPP_INDEX_TIMEOUT", 7200))


@contextmanager
def index_lock(path: Path, what: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock ``path`` while building the index of ``what`` (waiting for another holder at
    most ``timeout`` seconds, default :func:`lock_timeout`, then ``DataError``). On a file system
    without locks, go on unlocked (each process builds; the atomic rename keeps files whole)."""
    timeout = lock_timeout() if timeout is None else timeout
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _acquire(fd, path, what, timeout)
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, what: str, timeout: float) -> bool:
    start = time.monotonic()
    reported = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if reported is not None:
                print(f"etpp: {what}: index ready after {time.monotonic() - start:.0f} s of waiting", file=sys.stderr)
            return True
        except BlockingIOError:
            pass
        except OSError as exc:  # no locks here (some network file systems)
            print(f"etpp: {path.parent}: no file locks ({exc.strerror}); indexing {what} unlocked", file=sys.stderr)
            return False
        waited = time.monotonic() - start
        holder = os.pread(fd, 200, 0).decode(errors="replace") or "another process"
        if waited >= timeout:
            raise DataError(f"{what}: waited {waited:.0f} s for {holder} to finish indexing it (lock {path}); "
                            "raise ETPP_INDEX_TIMEOUT if that process is still scanning, else stop it")
        if reported is None or time.monotonic() - reported >= _REPORT_EVERY:
            print(f"etpp: {what}: waiting for {holder} to finish indexing it ({waited:.0f} s so far, "
                  f"at most {timeout:.0f} s)", file=sys.stderr)
            reported = time.monotonic()
        time.sleep(min(0.2, max(0.01, timeout - waited)))
