"""The index of WebDataset tar shards: members ``<key>.<image ext>`` with ``<key>.cls`` labels.

A shard is indexed from its tar headers (each member's name, offset and size; ``tarfile`` seeks
over the data), the ``.cls`` members (a few bytes each) and, per image, its first and last bytes
(:func:`etpp_dali.data.probe.probe_range`); an image is read whole only when Pillow must judge
it. Shards are indexed in parallel, and again only when a shard's size or mtime changes.
"""

from __future__ import annotations

import os
import tarfile
import time
from typing import Sequence

import numpy as np

from etpp_dali.data.entries import FIELDS, Chunk, Reasons, assemble, shallow
from etpp_dali.data.index import MappedIndex
from etpp_dali.data.parallel import map_fastest
from etpp_dali.data.probe import Probe, ProbeColumns, probe_range
from etpp_dali.data.records import DataError
from etpp_dali.data.store import INDEX_VERSION, RACY_NS, Recheck, index_path, load_index, newest_ns, of_kind

__all__ = ["shard_index", "IMAGE_EXTS"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")
_FIELDS = list(FIELDS) + ["offset"]


def shard_index(paths: Sequence[str], *, level: int, use_cache: bool) -> MappedIndex:
    """The fresh index of the shards ``paths`` (in that order), images checked at least to ``level``."""
    key = index_path("tar", *(os.path.realpath(p) for p in paths))
    what = paths[0] if len(paths) == 1 else f"{len(paths)} shards ({paths[0]}, ...)"
    return load_index(key, what, lambda idx: _stale(idx, paths, level),
                      lambda old: _build(paths, of_kind(old, "tar"), level), use_cache=use_cache)


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _stale(idx: MappedIndex, paths: Sequence[str], level: int) -> str | None:
    h = idx.header
    if of_kind(idx, "tar") is None:
        return "written by another version"
    if h["paths"] != list(paths):
        return "other shards"
    racy = h["listed_ns"] - RACY_NS
    for path, (size, mtime, *_) in zip(paths, h["groups"]):
        if _stat(path) != [size, mtime]:
            return f"shard {path} changed"
        if mtime >= racy:
            return Recheck(f"shard {path} changed near the scan")
    count = shallow(idx, level)
    return f"{count} image(s) checked less deeply than asked" if count else None


def _build(paths: Sequence[str], old: MappedIndex | None, level: int) -> tuple[dict, dict[str, np.ndarray]]:
    listed_ns = time.time_ns()
    stats = [_stat(p) for p in paths]
    before = {}  # shard path -> its old entries, where the shard is unchanged and checked deeply enough
    if old is not None:
        racy = old.header["listed_ns"] - RACY_NS
        for p, (size, mtime, start, end) in zip(old.header["paths"], old.header["groups"]):
            if _stat_or_none(p) == [size, mtime] and mtime < racy and not _shallow_part(old, start, end, level):
                before[p] = (start, end)
    reasons = Reasons()
    reason_map = reasons.remap(old.header["reasons"]) if old is not None else None
    todo = [p for p in paths if p not in before]
    done = dict(zip(todo, map_fastest(lambda p: _index_shard(p, level), todo, batch=4)))
    chunks, groups = [], []
    for path, (size, mtime) in zip(paths, stats):
        if path in done:
            chunk = _chunk(done[path], reasons, level)
        else:
            chunk = Chunk.copy_of(old, *before[path], reason_map)
        start = groups[-1][3] if groups else 0
        groups.append([size, mtime, start, start + len(chunk)])
        chunks.append(chunk)
    header = {"version": INDEX_VERSION, "kind": "tar", "paths": list(paths), "groups": groups,
              "listed_ns": listed_ns, "newest_ns": newest_ns([g[1] for g in groups]), "reasons": reasons.texts,
              "fields": _FIELDS}
    return header, assemble(chunks, _FIELDS, extra_good=("offset", "size"))


def _stat_or_none(path: str) -> list[int] | None:
    try:
        return _stat(path)
    except OSError:
        return None


def _shallow_part(idx: MappedIndex, start: int, end: int, level: int) -> bool:
    """Whether a good entry in ``start:end`` of ``idx`` was checked less deeply than ``level``."""
    return bool(np.any((idx["code"][start:end] > 0) & (idx["level"][start:end] < level)))


def _chunk(members: list[tuple[str, int, int, Probe]], reasons: Reasons, level: int) -> Chunk:
    chunk = Chunk([os.fsencode(key) for key, *_ in members], extra=["offset"])
    chunk.fields["label"][:] = [label for _, label, _, _ in members]
    chunk.fields["offset"][:] = [offset for _, _, offset, _ in members]
    chunk.fill(range(len(members)), ProbeColumns.of([probe for *_, probe in members]), level, reasons)
    chunk.todo = []
    return chunk


def _index_shard(path: str, level: int) -> list[tuple[str, int, int, Probe]]:
    """(key, label or -1, data offset, probe) per image member of the shard at ``path``."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    problems: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                ext = ext.lower()
                if ext == "cls":
                    text = tar.extractfile(m).read().decode(errors="replace").strip()
                    if text.lstrip("-").isdigit() and int(text) >= 0:
                        labels[key] = int(text)
                    else:
                        problems[key] = f"label {text!r} is not an integer >= 0"
                elif ext in IMAGE_EXTS:
                    images[key] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar shard ({exc})") from None
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for key, (offset, size) in images.items():
            if key in problems or key not in labels:
                out.append((key, -1, offset, (size, 0, 0, 0, 0, problems.get(key, "no .cls label member"))))
            else:
                out.append((key, labels[key], offset, probe_range(fd, offset, size, level)))
    finally:
        os.close(fd)
    return out
