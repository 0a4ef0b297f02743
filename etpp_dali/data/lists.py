"""The index of a file list: ``<path> <integer label>`` lines, each file probed once.

Entries keep the list's order. Freshness: the list file's size and mtime, and the mtime of every
folder the list points into (a file added, removed or renamed there changes it); the bad files are
statted on every open. When something changed, the list is read again and only entries whose file
is new or changed (size, mtime) are probed; the others are taken from the old index.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import numpy as np

from etpp_dali.data.entries import FIELDS, Chunk, Reasons, assemble, known_names, reuse_unchanged
from etpp_dali.data.folders import probe_todo, stale_entries
from etpp_dali.data.index import MappedIndex
from etpp_dali.data.records import DataError
from etpp_dali.data.store import INDEX_VERSION, RACY_NS, Recheck, index_path, load_index, newest_ns, of_kind

__all__ = ["list_index"]

_MISSING = f"cannot open ({os.strerror(errno.ENOENT)})"


def list_index(list_file: Path, base: Path, *, level: int, use_cache: bool) -> MappedIndex:
    """The fresh index of ``list_file`` (relative paths under ``base``), good files checked at
    least to ``level``."""
    path = index_path("list", str(list_file.resolve()), str(base.resolve()))
    return load_index(path, str(list_file), lambda idx: _stale(idx, list_file, level),
                      lambda old: _build(list_file, base, of_kind(old, "list"), level), use_cache=use_cache)


def _mtime(path: str | Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _stale(idx: MappedIndex, list_file: Path, level: int) -> str | None:
    h = idx.header
    if of_kind(idx, "list") is None:
        return "written by another version"
    racy = h["listed_ns"] - RACY_NS
    st = os.stat(list_file)
    if [st.st_size, st.st_mtime_ns] != h["list_stat"]:
        return "the list changed"
    if st.st_mtime_ns >= racy:
        return Recheck("the list changed near the scan")
    for folder, mtime in h["groups"]:
        if _mtime(folder) != mtime:
            return f"folder {folder} changed"
        if mtime >= racy:
            return Recheck(f"folder {folder} changed near the scan")
    return stale_entries(idx, [""] * len(h["groups"]), level, every=False)


def _parse(list_file: Path, base: Path) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DataError(f"{list_file}:{n}: {line!r} is not '<path> <label>' with a label >= 0")
        paths.append(str(Path(parts[0]) if os.path.isabs(parts[0]) else base / parts[0]))
        labels.append(int(parts[1]))
    return paths, labels


def _build(list_file: Path, base: Path, old: MappedIndex | None, level: int) -> tuple[dict, dict[str, np.ndarray]]:
    listed_ns = time.time_ns()
    st = os.stat(list_file)
    paths, labels = _parse(list_file, base)
    folders: dict[str, int] = {}
    group = np.array([folders.setdefault(os.path.dirname(p), len(folders)) for p in paths], dtype=np.int32)
    groups = [[folder, _mtime(folder)] for folder in folders]
    chunk = Chunk([os.fsencode(p) for p in paths])
    chunk.fields["label"][:] = labels
    reasons = Reasons()
    if old is not None:
        _reuse(chunk, paths, old, reasons.remap(old.header["reasons"]), level)
    probe_todo([chunk], [""], level, reasons, None)
    reasons.texts = ["missing file" if t == _MISSING else t for t in reasons.texts]
    arrays = assemble([chunk], list(FIELDS), group=group)
    header = {"version": INDEX_VERSION, "kind": "list", "list_stat": [st.st_size, st.st_mtime_ns],
              "listed_ns": listed_ns, "newest_ns": newest_ns(arrays["mtime"], [g[1] for g in groups], st.st_mtime_ns),
              "reasons": reasons.texts, "groups": groups, "fields": list(FIELDS)}
    return header, arrays


def _reuse(chunk: Chunk, paths: list[str], old: MappedIndex, reason_map: np.ndarray, level: int) -> None:
    """Entries whose file is unchanged since ``old`` are taken from it; the rest stay to probe."""
    known = known_names(old, 0, len(old["name_end"]))
    candidates = ((j, known[os.fsencode(p)], p) for j, p in enumerate(paths) if os.fsencode(p) in known)
    reuse_unchanged(chunk, candidates, old, reason_map, level, old.header["listed_ns"] - RACY_NS)
