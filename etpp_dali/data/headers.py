"""Probing many JPEGs at once: their first bytes read into one buffer, their marker segments
walked together, a NumPy step per segment instead of an interpreted loop per file.

A header walk in Python costs a good part of what the system calls that read the header cost (a
few microseconds of bytecode per segment, and a plain JPEG has eight or so before its scan).
Here every file of a batch advances one segment per step, with the checks of
:func:`~etpp_dali.data.probe.probe_path`'s fast path: frame, quantisation tables, JFIF and Adobe
block lengths. A file the walk leaves (no JPEG, a segment it does not know, an MPF or Photoshop
block, a header longer than the bytes read, a huge or empty frame) goes to that fast path alone,
with the bytes already read (a longer header read where needed), and what the fast path leaves
to Pillow goes to ``probe_path``: every file gets what ``probe_path`` gives it.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from etpp_dali.data.probe import (
    CHECK,
    DEEP,
    HEAD_BYTES,
    INSPECTED_MARKERS,
    KNOWN_MARKERS,
    SOF_MARKERS,
    TAIL_BYTES,
    Probe,
    ProbeColumns,
    jpeg_fast,
    probe_path,
)
from etpp_dali.data.records import format_code

__all__ = ["Piece", "probe_batch", "release_buffer"]

_MAX_SEGMENTS = 64   # more segments before the scan than this: probed alone
_MAX_TABLES = 4      # quantisation tables in one DQT segment (a JPEG has at most 4)
_JPEG = format_code("JPEG")
_BUFFERS = threading.local()
Piece = tuple[str, Sequence[str]]  # a folder prefix (or "") and names in it
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list]  # [f(x) for x in items], as the caller runs it


def _table(values: Sequence[int]) -> np.ndarray:
    out = np.zeros(256, dtype=bool)
    out[list(values)] = True
    return out


_IS_KNOWN, _IS_SOF, _IS_INSPECTED = _table(KNOWN_MARKERS), _table(SOF_MARKERS), _table(INSPECTED_MARKERS)


def probe_batch(pieces: Sequence[Piece], level: int, mapper: Mapper | None = None) -> ProbeColumns:
    """``probe_path(prefix + name, level)`` of every name of the pieces ``(prefix, names)``, in
    order, as columns (see the module docstring). A prefix is a folder (ending in a separator,
    opened once: its files are opened by name) or ``""`` (names are paths). ``mapper(f, items)`` is
    ``[f(x) for x in items]`` as the caller runs it (threads where reads wait); the reads, or at
    ``DEEP`` the probes, go through it."""
    mapper = mapper or (lambda f, items: [f(x) for x in items])
    names = [name for _, part in pieces for name in part]
    n = len(names)
    if level >= DEEP or n == 0:
        paths = [prefix + name for prefix, part in pieces for name in part]
        return ProbeColumns.of(mapper(partial(probe_path, level=level), paths))
    owner = np.repeat(np.arange(len(pieces)), [len(part) for _, part in pieces])
    heads = _buffer(n)
    rows = memoryview(heads.reshape(-1))
    folders = [_open_folder(prefix) for prefix, _ in pieces]
    try:
        items = [(folders[k], name if folders[k] is not None else pieces[k][0] + name,
                  rows[i * HEAD_BYTES:(i + 1) * HEAD_BYTES]) for i, (k, name) in enumerate(zip(owner.tolist(), names))]
        reads, sizes, mtimes, tails = zip(*mapper(partial(_read, check=level >= CHECK), items))
    finally:
        for fd in folders:
            if fd is not None:
                os.close(fd)
    size, mtime, read = np.array(sizes, np.int64), np.array(mtimes, np.int64), np.array(reads, np.int64)
    height, width, alone = _walk(heads.reshape(-1), np.arange(n, dtype=np.int64) * HEAD_BYTES, read, size)
    code = np.where(alone, 0, _JPEG).astype(np.uint8)
    if level >= CHECK:
        truncated = np.flatnonzero(~alone & ~np.array([b"\xff\xd9" in t for t in tails]))
    else:
        truncated = np.zeros(0, np.int64)
    code[truncated] = 0
    height[truncated] = width[truncated] = 0
    out = ProbeColumns(size, mtime, code, height, width, truncated,
                       ["truncated JPEG (no end-of-image marker)"] * len(truncated))
    bad, why = [], []
    for i in np.flatnonzero(alone).tolist():
        probe = _alone(pieces[owner[i]][0] + names[i], heads[i, :reads[i]].tobytes(), tails[i], sizes[i],
                       mtimes[i], level)
        out.size[i], out.mtime[i], out.code[i], out.height[i], out.width[i], reason = probe
        if reason:
            bad.append(i)
            why.append(reason)
    if bad:
        order = np.argsort(np.concatenate([out.bad, bad]), kind="stable")
        out.bad = np.concatenate([out.bad, bad])[order]
        out.why = [(out.why + why)[k] for k in order.tolist()]
    return out


def _open_folder(prefix: str) -> int | None:
    """A descriptor of the folder ``prefix`` names, else ``None`` (its files are then opened by path,
    and a folder that is gone shows as each file's reason)."""
    if not prefix:
        return None
    try:
        return os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _alone(path: str, head: bytes, tail: bytes, size: int, mtime: int, level: int) -> Probe:
    """``probe_path`` of a file the walk left: the bytes already read go to its fast path (a longer
    header is read where needed), and what that does not decide goes to ``probe_path`` itself."""
    if size < 0:
        return probe_path(path, level)
    try:
        fast = jpeg_fast(head, size, level, partial(_read_head, path), lambda: tail)
    except OSError:  # gone or changed since: probe_path says how
        fast = None
    return probe_path(path, level) if fast is None else (size, mtime) + fast


def _read_head(path: str, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, 0)
    finally:
        os.close(fd)


def _read(item: tuple[int | None, str, memoryview], check: bool) -> tuple[int, int, int, bytes]:
    """Read the first bytes of the file ``name`` (in the folder ``folder``, else a path) into ``row``:
    how many, its size and mtime, and (``check``) its last bytes (within the first ones for a
    small file); a size of -1 where it cannot be read."""
    folder, name, row = item
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=folder)
    except OSError:
        return 0, -1, 0, b""
    try:
        st = os.fstat(fd)
        read = os.preadv(fd, [row], 0)
        if not check:
            return read, st.st_size, st.st_mtime_ns, b""
        if st.st_size <= HEAD_BYTES:
            return read, st.st_size, st.st_mtime_ns, row[max(0, read - TAIL_BYTES):read].tobytes()
        return read, st.st_size, st.st_mtime_ns, os.pread(fd, TAIL_BYTES, st.st_size - TAIL_BYTES)
    except OSError:
        return 0, -1, 0, b""
    finally:
        os.close(fd)


def release_buffer() -> None:
    """Let this thread's header buffer go (a scan's end: a training process keeps no 8 MB for it)."""
    _BUFFERS.__dict__.pop("heads", None)


def _buffer(n: int) -> np.ndarray:
    """This thread's buffer for ``n`` headers, kept from batch to batch until
    :func:`release_buffer` (a fresh one costs its page faults every time, as much as the walk)."""
    heads = getattr(_BUFFERS, "heads", None)
    if heads is None or len(heads) < n:
        heads = _BUFFERS.heads = np.zeros((n, HEAD_BYTES), np.uint8)
    return heads[:n]


def _walk(flat: np.ndarray, first: np.ndarray, read: np.ndarray,
          size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame sizes found by walking every header (``read`` bytes at ``first`` in ``flat``) to its
    start of scan, and which files the walk leaves (``alone``: it could not decide them as
    ``probe_path``'s fast path would)."""
    n = len(first)
    height, width = np.zeros(n, np.int32), np.zeros(n, np.int32)
    framed = np.zeros(n, bool)
    alone = ~((read >= 3) & (flat[first] == 0xFF) & (flat[first + 1] == 0xD8) & (flat[first + 2] == 0xFF)
              & (size > 0))
    walking = ~alone
    pos = np.full(n, 2, np.int64)
    for _ in range(_MAX_SEGMENTS):
        rows = np.flatnonzero(walking)
        if rows.size == 0:
            break
        p, limit = pos[rows], read[rows]
        base = first[rows]
        short = p + 4 > limit
        p4 = np.where(short, 0, p)  # keeps reads inside the row; those rows are dropped below
        at = base + p4
        marker = flat[at + 1]
        end = p4 + 2 + ((flat[at + 2].astype(np.int64) << 8) | flat[at + 3])
        scan = marker == 0xDA
        leave = short | (flat[at] != 0xFF)
        leave |= ~scan & ((end < p4 + 4) | ~_IS_KNOWN[marker] | (end > limit))
        ok = ~leave & ~scan
        start = base + p4 + 4
        seg = np.minimum(end, limit) - p4 - 4   # segment bytes present (only read where ok)
        sof = np.flatnonzero(ok & _IS_SOF[marker])
        if sof.size:
            good = _frame(flat, start[sof], seg[sof], rows[sof], height, width)
            leave[sof[~good]] = True
            framed[rows[sof[good]]] = True
        inspect = np.flatnonzero(ok & _IS_INSPECTED[marker])
        leave[inspect[_odd_segment(flat, marker[inspect], start[inspect], start[inspect] + seg[inspect])]] = True
        done = scan & ~leave
        alone[rows[leave]] = True
        alone[rows[done & ~framed[rows]]] = True  # a scan without a frame: Pillow says why
        walking[rows[leave | done]] = False
        pos[rows] = np.where(leave | done, p, end)
    alone |= walking  # more segments than the walk takes
    big = height.astype(np.int64) * width > Image.MAX_IMAGE_PIXELS
    alone |= framed & (big | (height < 1) | (width < 1))
    height[alone] = width[alone] = 0
    return height, width, alone


def _frame(flat: np.ndarray, start: np.ndarray, seg: np.ndarray, rows: np.ndarray, height: np.ndarray,
           width: np.ndarray) -> np.ndarray:
    """Read the frame headers of ``seg`` bytes at ``start`` into ``height`` and ``width`` at
    ``rows``; which ones are frames Pillow takes (8 bits, 1, 3 or 4 components)."""
    good = (seg >= 6) & (flat[start] == 8) & np.isin(flat[start + 5], (1, 3, 4))
    s, r = start[good], rows[good]
    height[r] = (flat[s + 1].astype(np.int32) << 8) | flat[s + 2]
    width[r] = (flat[s + 3].astype(np.int32) << 8) | flat[s + 4]
    return good


def _starts(flat: np.ndarray, start: np.ndarray, end: np.ndarray, text: bytes) -> np.ndarray:
    """Whether each segment ``flat[start:end]`` starts with ``text``."""
    out = end - start >= len(text)
    for k, byte in enumerate(text):
        out &= flat[np.minimum(start + k, len(flat) - 1)] == byte
    return out


def _odd_segment(flat: np.ndarray, marker: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Which segments (of markers whose content Pillow inspects: ``INSPECTED_MARKERS``) Pillow would read
    differently than a plain walk: what ``probe._known_segment`` refuses, and any MPF or Photoshop
    block (probed alone: rare, and ``probe_path`` walks them as Pillow does)."""
    odd = np.zeros(len(marker), bool)
    length = end - start
    dqt = np.flatnonzero(marker == 0xDB)
    if dqt.size:
        s, e = start[dqt].copy(), end[dqt]
        for _ in range(_MAX_TABLES):
            more = s < e
            s[more] += 1 + np.where(flat[s[more]] < 16, 64, 128)
        odd[dqt] = s != e
    for code, text, shortest in ((0xE0, b"JFIF", 12), (0xE2, b"MPF\0", None), (0xED, b"Photoshop 3.0\x00", None),
                                 (0xEE, b"Adobe", 12)):
        rows = np.flatnonzero(marker == code)
        if rows.size:
            hit = _starts(flat, start[rows], end[rows], text)
            odd[rows] = hit if shortest is None else hit & (length[rows] < shortest)
    return odd
