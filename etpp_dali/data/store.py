"""Where indexes live, and how a process gets a fresh one: map the one on disk, or build it once.

:func:`load_index` maps the index when it is whole and fresh (the caller's ``check`` says so).
Otherwise it takes the index's lock (:mod:`etpp_dali.data.lock`): the first process to get it
scans (reusing what the old index knows of unchanged files) and writes the new index atomically;
the others wait on the lock, then find the new index fresh and map it. So on a node, and across
nodes where the cache folder is shared, one process reads the data set's files. A damaged index
is said so and rebuilt; an index that went stale under a process is said so and rescanned.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from etpp_dali.data.index import DamagedIndex, MappedIndex, read_index, write_index
from etpp_dali.data.lock import index_lock

__all__ = ["INDEX_VERSION", "RACY_NS", "Recheck", "cache_dir", "index_path", "load_index", "newest_ns", "of_kind"]

INDEX_VERSION = 3
# A change this close to a scan may share a timestamp with what the scan saw (file systems stamp
# with a coarse clock), so it could go unseen: an index is only written once its newest timestamp
# is older than its scan by this much (the builder waits and rescans what was that new).
RACY_NS = 500_000_000
_SETTLE_ROUNDS = 3
Build = Callable[[MappedIndex | None], tuple[dict[str, Any], dict[str, np.ndarray]]]


class Recheck(str):
    """A reason to rescan that is not a change seen (a folder's timestamp too close to the last
    scan to tell): the rescan goes on without a word."""


def of_kind(idx: MappedIndex | None, kind: str) -> MappedIndex | None:
    """``idx`` when it is an index of ``kind`` written by this version, else ``None``."""
    ok = idx is not None and idx.header.get("version") == INDEX_VERSION and idx.header.get("kind") == kind
    return idx if ok else None


def cache_dir() -> Path:
    """Where the project caches indexes and the demo set (``ETPP_CACHE`` overrides)."""
    root = os.environ.get("ETPP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "etpp-dali")
    return Path(root)


def index_path(kind: str, *key: str) -> Path:
    """The index file of a source: its kind and what identifies it (resolved paths, classes)."""
    digest = hashlib.sha256("\0".join(key).encode(errors="surrogateescape")).hexdigest()[:24]
    return cache_dir() / "index" / f"{kind}-{digest}.idx"


def load_index(path: Path, what: str, check: Callable[[MappedIndex], str | None], build: Build, *,
               use_cache: bool = True) -> MappedIndex:
    """A fresh index of ``what`` at ``path``: mapped when ``check`` (the reason it is stale, or
    ``None``) passes it, else built by ``build(old index or None)`` under the lock and written.
    ``use_cache=False`` builds in memory and neither reads nor writes a file."""
    if not use_cache:
        return _in_memory(_settled(build, None))
    old = _read(path, what)
    why = check(old) if old is not None else None
    if old is not None and why is None:
        return old
    built = None
    try:
        with index_lock(path.with_name(path.name + ".lock"), what):
            if _replaced(path, old):  # another process rebuilt it while this one waited
                old = _read(path, what)
                why = check(old) if old is not None else None
                if old is not None and why is None:
                    return old
            if old is not None and not isinstance(why, Recheck):
                print(f"etpp: {what}: index out of date ({why}); rescanning what changed", file=sys.stderr)
            built = _settled(build, old)
            write_index(path, *built)
    except OSError as exc:  # a cache folder that cannot be written: this process keeps its own index
        print(f"etpp: {path.parent}: cannot write the index ({exc.strerror or exc}); indexing {what} in memory",
              file=sys.stderr)
        return _in_memory(built if built is not None else _settled(build, old))
    built = old = None
    _release_heap()
    return read_index(path, verify_data=False)


def _release_heap() -> None:
    """Give the scan's freed memory back to the system: glibc keeps freed heap pages for reuse,
    which would leave the process that built an index holding far more than one that maps it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _settled(build: Build, old: MappedIndex | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``build(old)``, rebuilt (only what changed that recently is read again) after waiting out
    :data:`RACY_NS` while its newest timestamp (``header["newest_ns"]``) is that close to its scan."""
    built = build(old)
    for _ in range(_SETTLE_ROUNDS):
        header = built[0]
        if header["newest_ns"] < header["listed_ns"] - RACY_NS:
            break
        wait = min(2 * RACY_NS, header["newest_ns"] + RACY_NS - time.time_ns())
        time.sleep(max(0, wait) / 1e9)
        built = build(_in_memory(built))
    return built


def newest_ns(*mtimes: Any) -> int:
    """The newest of timestamps given as numbers and arrays (0 when there is none)."""
    return max([int(np.max(m)) for m in mtimes if np.size(m)], default=0)


def _in_memory(built: tuple[dict[str, Any], dict[str, np.ndarray]]) -> MappedIndex:
    return MappedIndex(None, built[0], built[1], None)


def _read(path: Path, what: str) -> MappedIndex | None:
    try:
        return read_index(path)
    except FileNotFoundError:
        return None
    except (DamagedIndex, OSError) as exc:
        print(f"etpp: {what}: index unusable ({exc}); rebuilding it", file=sys.stderr)
        return None


def _replaced(path: Path, old: MappedIndex | None) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return old is None or (st.st_ino, st.st_mtime_ns, st.st_size) != (old.stat.st_ino, old.stat.st_mtime_ns,
                                                                      old.stat.st_size)
