"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint, result or
cache in place of a good one.

Each writer writes a temporary file beside the target (same directory, so the rename stays on
one file system), flushes and fsyncs it, then renames it over the target. On failure the
temporary file is removed and the old target is untouched. No torch or DALI import.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

__all__ = ["atomic_path", "atomic_open", "save_with", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    For writers that want a file name (``savefig``, ``torch.save``, a directory made by
    ``mkdir``). The parent directory is created. On an exception the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only replaces ``path`` once the ``with`` block succeeds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode = {mode!r}; atomic_open writes whole files ('w' or 'wb')")
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def _remove(tmp: Path) -> None:
    try:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass


def save_with(writer: Callable[[IO[bytes]], None], path: str | Path) -> Path:
    """Call ``writer(f)`` on a binary file that atomically becomes ``path`` (e.g. torch.save)."""
    with atomic_open(path, "wb") as f:
        writer(f)
    return Path(path)
