"""The index of an ImageFolder split (``root/<class>/...``): walk it, probe what is new or changed.

The walk visits the class folders in order and each one as ``os.walk`` does (top-down, sub-folders
and files sorted, names starting with a dot skipped, symbolic links to folders not followed), so
images keep the order, and thereby the indices, they always had.

Freshness: a folder's mtime changes when a file in it is added, removed or renamed, so a stat per
folder (a thousand for ImageNet-1K) tells whether the listing is the one indexed; a folder that
changed is listed again, and only its new or changed files are probed. An index is written only
once its folders and files are older than its scan by :data:`~etpp_dali.data.store.RACY_NS`
(coarse timestamps: a later change must show as a new mtime); one that is not is rescanned.
Contents changed in place (same name) show in a file's size and mtime: ``verify_files`` stats
every file (``etpp check-data`` does; a training run relies on the listing and the decoder's
run-time recovery). Bad files are statted on every open, so a fixed file comes back.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from etpp_dali.data.entries import FIELDS, Chunk, Reasons, assemble, known_names, reuse_unchanged, shallow, unchanged
from etpp_dali.data.headers import Piece
from etpp_dali.data.index import MappedIndex
from etpp_dali.data.parallel import Prober
from etpp_dali.data.store import INDEX_VERSION, RACY_NS, Recheck, index_path, load_index, newest_ns, of_kind

__all__ = ["ProbeQueue", "Progress", "folder_index", "probe_todo", "stale_entries"]

_PROBE_BATCH = 1 << 16
Progress = Callable[[int, int], None]  # (files just done, files to do in all)


def folder_index(root: Path, classes: Sequence[str], found: Sequence[str], *, level: int, verify_files: bool,
                 use_cache: bool, progress: Progress | None = None) -> MappedIndex:
    """The fresh index of the split ``root`` with labels in ``classes`` order (``found``: the class
    folders there), every good file checked at least to ``level``."""
    path = index_path("folder", str(root.resolve()), "\n".join(classes))
    return load_index(
        path, str(root), lambda idx: _stale(idx, root, found, level, verify_files, progress),
        lambda old: _build(root, list(classes), list(found), of_kind(old, "folder"), level, verify_files, progress),
        use_cache=use_cache)


def _prefix(root: Path, rel: str) -> str:
    return str(root / rel) + os.sep


def _stale(idx: MappedIndex, root: Path, found: Sequence[str], level: int, verify_files: bool,
           progress: Progress | None) -> str | None:
    """Why ``idx`` no longer describes ``root`` (``None``: it does)."""
    h = idx.header
    if of_kind(idx, "folder") is None:
        return "written by another version"
    if h["found"] != list(found):
        return "class folders added or removed"
    racy = h["listed_ns"] - RACY_NS
    for rel, mtime, *_ in h["groups"]:
        try:
            now = os.stat(root / rel).st_mtime_ns
        except OSError:
            return f"folder {rel} is gone"
        if now != mtime or mtime >= racy:
            return f"folder {rel} changed" if now != mtime else Recheck(f"folder {rel} changed near the scan")
    prefixes = [_prefix(root, g[0]) for g in h["groups"]]
    return stale_entries(idx, prefixes, level, verify_files, progress)


def stale_entries(idx: MappedIndex, prefixes: Sequence[str], level: int, every: bool,
                  progress: Progress | None = None) -> str | None:
    """Why entries of ``idx`` must be probed again (``None``: none must): good files checked
    below ``level``, bad files changed since (statted), and with ``every`` any file whose size or
    mtime changed."""
    a = idx.arrays
    watch = np.arange(len(a["code"])) if every else np.flatnonzero(a["code"] == 0)
    ends = a["name_end"][watch]
    starts, ends, groups = (ends - _name_lengths(a)[watch]).tolist(), ends.tolist(), a["group"][watch].tolist()
    names = memoryview(a["names"])
    sizes, mtimes = [], []
    for k, (start, end, group) in enumerate(zip(starts, ends, groups)):
        try:
            st = os.stat(prefixes[group] + str(names[start:end], "utf-8", "surrogateescape"))
            sizes.append(st.st_size)
            mtimes.append(st.st_mtime_ns)
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
        if progress is not None and k % 65536 == 65535:
            progress(65536, len(watch))
    old_mtime = a["mtime"][watch]
    changed = np.count_nonzero((np.array(sizes, dtype=np.int64) != a["size"][watch])
                               | (np.array(mtimes, dtype=np.int64) != old_mtime)
                               | (old_mtime >= idx.header["listed_ns"] - RACY_NS))
    if changed:
        return f"{changed} file(s) changed"
    low = shallow(idx, level)
    return f"{low} file(s) checked less deeply than asked" if low else None


def _name_lengths(a: dict[str, np.ndarray]) -> np.ndarray:
    return np.diff(a["name_end"], prepend=0)


def _build(root: Path, classes: list[str], found: list[str], old: MappedIndex | None, level: int,
           verify_files: bool, progress: Progress | None) -> tuple[dict, dict[str, np.ndarray]]:
    listed_ns = time.time_ns()
    reasons = Reasons()
    index = {c: i for i, c in enumerate(classes)}
    with ProbeQueue(level, reasons, progress) as queue:  # folders are probed while later ones are listed
        walk = _Walk(root, old, reasons, level, verify_files, queue.add)
        for cls in found:
            if cls in index:  # a val-only class: reported by scan_dataset
                walk.visit(cls, index[cls])
    arrays = assemble(walk.chunks, list(FIELDS))
    header = {"version": INDEX_VERSION, "kind": "folder", "root": str(root), "found": found, "classes": classes,
              "listed_ns": listed_ns, "newest_ns": newest_ns(arrays["mtime"], [g[1] for g in walk.groups]),
              "reasons": reasons.texts, "groups": walk.groups, "fields": list(FIELDS)}
    return header, arrays


class ProbeQueue:
    """Probes the entries chunks still have to do, as they are listed: batches of paths go to the
    workers while the walk goes on, and each batch's results fill its chunks (``add`` a chunk with
    its group's path prefix; leaving the ``with`` block probes the rest and waits for all).
    ``progress(done, listed)``: files probed, files listed so far."""

    def __init__(self, level: int, reasons: Reasons, progress: Progress | None) -> None:
        self.level, self.reasons, self.progress = level, reasons, progress
        self.listed = 0
        self._jobs: list[tuple[Chunk, list[int]]] = []
        self._pieces: list[Piece] = []
        self._files = 0
        self._pending: list[tuple[list[tuple[Chunk, list[int]]], Callable[[], list]]] = []
        self._prober: Prober | None = None

    def __enter__(self) -> ProbeQueue:
        return self

    def add(self, chunk: Chunk, prefix: str) -> None:
        if not chunk.todo:
            return
        self._pieces.append((prefix, chunk.texts(chunk.todo)))
        self._jobs.append((chunk, chunk.todo))
        self.listed += len(chunk.todo)
        self._files += len(chunk.todo)
        chunk.todo = []
        if self._files >= _PROBE_BATCH:
            self._submit()

    def _submit(self) -> None:
        if self._prober is None:  # a full batch means a large scan: worker processes
            self._prober = Prober(self.level, self._files)
        tick = None if self.progress is None else (lambda n: self.progress(n, self.listed))
        submitted = self._prober.submit(self._pieces, tick)
        self._finish()  # the batch before this one
        self._pending.append((self._jobs, submitted))
        self._jobs, self._pieces, self._files = [], [], 0

    def _finish(self) -> None:
        for jobs, probes in self._pending:
            done, start = probes(), 0
            for c, js in jobs:
                c.fill(js, done.part(start, start + len(js)), self.level, self.reasons)
                start += len(js)
        self._pending.clear()

    def __exit__(self, kind: Any, *rest: Any) -> None:
        try:
            if kind is None and self._files:
                self._submit()
            if kind is None:
                self._finish()
        finally:
            if self._prober is not None:
                self._prober.__exit__(kind, *rest)


def probe_todo(chunks: Sequence[Chunk], prefixes: Sequence[str], level: int, reasons: Reasons,
               progress: Progress | None) -> None:
    """Probe every entry the chunks still have to do (``prefixes[g]`` + name is a path)."""
    with ProbeQueue(level, reasons, progress) as queue:
        for chunk, prefix in zip(chunks, prefixes):
            queue.add(chunk, prefix)


class _Walk:
    """``os.walk`` over the class folders, reusing the old index's listing of unchanged folders."""

    def __init__(self, root: Path, old: MappedIndex | None, reasons: Reasons, level: int, verify_files: bool,
                 listed: Callable[[Chunk, str], None]):
        self.root, self.old, self.reasons, self.level, self.verify_files = root, old, reasons, level, verify_files
        self.listed = listed  # hears of each folder's chunk (and its path prefix) once listed
        self.before = {g[0]: g for g in old.header["groups"]} if old else {}
        self.reason_map = reasons.remap(old.header["reasons"]) if old else None
        self.racy = old.header["listed_ns"] - RACY_NS if old else 0
        self.groups: list[list] = []  # [folder below root, mtime, label, first entry, end, sub-folders]
        self.chunks: list[Chunk] = []

    def visit(self, rel: str, label: int) -> None:
        folder = self.root / rel
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            return  # as os.walk: a folder that cannot be read is skipped
        before = self.before.get(rel)
        if before is not None and before[1] == mtime and mtime < self.racy:
            chunk, subdirs = Chunk.copy_of(self.old, before[3], before[4], self.reason_map), before[5]
            chunk.fields["label"][:] = label
            self._recheck(chunk, str(folder), before[3])
        else:
            files, subdirs = _list_folder(str(folder))
            chunk = Chunk((), label, texts=files)
            if before is not None:
                self._reuse(chunk, str(folder), files, before)
        start = self.groups[-1][4] if self.groups else 0
        self.groups.append([rel, mtime, label, start, start + len(chunk), subdirs])
        self.chunks.append(chunk)
        self.listed(chunk, _prefix(self.root, rel))
        for d in subdirs:
            self.visit(f"{rel}/{d}", label)

    def _recheck(self, chunk: Chunk, folder: str, start: int) -> None:
        """Which entries of an unchanged folder to probe again (see :func:`stale_entries`)."""
        f = chunk.fields
        js = range(len(chunk)) if self.verify_files else np.flatnonzero((f["code"] == 0) | (f["level"] < self.level))
        chunk.todo = [int(j) for j in js if not self._same(os.path.join(folder, os.fsdecode(chunk.name(j))),
                                                          start + int(j))]

    def _reuse(self, chunk: Chunk, folder: str, files: list[str], before: list) -> None:
        """A changed folder's entries that the old index knows, unchanged, are taken from it."""
        known = known_names(self.old, before[3], before[4])
        candidates = ((j, known[os.fsencode(n)], os.path.join(folder, n)) for j, n in enumerate(files)
                      if os.fsencode(n) in known)
        reuse_unchanged(chunk, candidates, self.old, self.reason_map, self.level, self.racy)

    def _same(self, path: str, pos: int) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return unchanged(self.old, pos, st, self.level, self.racy)


def _list_folder(folder: str) -> tuple[list[str], list[str]]:
    """Files and the sub-folders ``os.walk`` descends into, sorted, without dot names."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return [], []
    kinds = [(e, _is_dir(e)) for e in entries if not e.name.startswith(".")]
    return (sorted(e.name for e, is_dir in kinds if not is_dir),
            sorted(e.name for e, is_dir in kinds if is_dir and not e.is_symlink()))


def _is_dir(entry: os.DirEntry) -> bool:
    """As ``os.walk`` decides: a type it cannot read makes the entry a file."""
    try:
        return entry.is_dir()
    except OSError:
        return False
