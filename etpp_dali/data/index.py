"""The index file: named arrays and a JSON header in one binary file, memory-mapped to read.

Layout: the magic ``ETPPIDX1``; the header's length (8 bytes, little-endian); the SHA-256 of the
header (32 bytes); the header (UTF-8 JSON); then each array, 64-byte aligned. The header names
every array (dtype, shape, offset) and holds a CRC-32 of the array bytes and their length.

Reading maps the file once (``mmap``, read-only) and makes every array a view of the mapping: no
copy, so the processes of a node that map the same file share its pages through the page cache
and hold next to nothing of their own. A file that is short, has another magic, or whose header
or array checksum does not match raises :class:`DamagedIndex`; callers rebuild it.

Writing goes through :func:`etpp_dali.util.files.atomic_open` (a temporary file, fsync, rename),
so a reader sees the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from etpp_dali.util.files import atomic_open

__all__ = ["DamagedIndex", "MappedIndex", "read_index", "write_index"]

MAGIC = b"ETPPIDX1"
_ALIGN = 64
_PREFIX = len(MAGIC) + 8 + 32


class DamagedIndex(Exception):
    """An index file that cannot be trusted (short, another format, a checksum that fails)."""


class MappedIndex:
    """A read index: its ``header`` (a dict) and ``arrays`` (read-only views of the mapping)."""

    def __init__(self, path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], stat: os.stat_result):
        self.path, self.header, self.arrays, self.stat = path, header, arrays, stat

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _raw(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array."""
    return memoryview(a.reshape(-1).view(np.uint8))


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def write_index(path: str | Path, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` (C-contiguous copies are made where needed) and ``header`` to ``path``
    atomically; ``header`` must be JSON-serialisable and not use the keys ``arrays``, ``crc``
    and ``body``."""
    table, blobs = {}, []
    body = 0
    for name, value in arrays.items():
        a = np.ascontiguousarray(value)
        table[name] = [a.dtype.str, list(a.shape), body]
        blobs.append(a)
        body = _aligned(body + a.nbytes)
    crc = 0
    for a in blobs:
        crc = zlib.crc32(_raw(a), crc)
    doc = dict(header)
    doc.update(arrays=table, crc=crc, body=body)
    text = json.dumps(doc, separators=(",", ":")).encode()
    start = _aligned(_PREFIX + len(text))
    with atomic_open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(text)) + hashlib.sha256(text).digest() + text)
        f.write(b"\0" * (start - _PREFIX - len(text)))
        for a in blobs:
            f.write(_raw(a))
            f.write(b"\0" * (_aligned(a.nbytes) - a.nbytes))
    return Path(path)


def read_index(path: str | Path, *, verify_data: bool = True) -> MappedIndex:
    """Map the index at ``path``; ``DamagedIndex`` when it cannot be trusted, ``OSError`` when it
    cannot be read (missing). ``verify_data`` checks the arrays' CRC-32 (one pass over the
    file's pages, which a fresh mapping reads anyway)."""
    path = Path(path)
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        if stat.st_size < _PREFIX:
            raise DamagedIndex(f"{path}: {stat.st_size} bytes, shorter than an index header")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header = _read_header(path, mm, stat.st_size)
    start = _aligned(_PREFIX + struct.unpack_from("<Q", mm, len(MAGIC))[0])
    if start + header.get("body", -1) != stat.st_size:
        raise DamagedIndex(f"{path}: {stat.st_size} bytes where the header says {start + header.get('body', 0)}"
                           " (truncated)")
    arrays, crc = {}, 0
    try:
        for name, (dtype, shape, offset) in header["arrays"].items():
            a = np.ndarray(tuple(shape), dtype=np.dtype(dtype), buffer=mm, offset=start + offset)
            arrays[name] = a
            if verify_data:
                crc = zlib.crc32(_raw(a), crc)
    except (TypeError, ValueError, KeyError) as exc:
        raise DamagedIndex(f"{path}: arrays do not fit the file ({exc})") from None
    if verify_data and crc != header.get("crc"):
        raise DamagedIndex(f"{path}: the arrays' checksum does not match (damaged data)")
    return MappedIndex(path, header, arrays, stat)


def _read_header(path: Path, mm: mmap.mmap, size: int) -> dict[str, Any]:
    if mm[:len(MAGIC)] != MAGIC:
        raise DamagedIndex(f"{path}: not an index file of this version")
    (length,) = struct.unpack_from("<Q", mm, len(MAGIC))
    if _PREFIX + length > size:
        raise DamagedIndex(f"{path}: truncated header")
    text = mm[_PREFIX:_PREFIX + length]
    if hashlib.sha256(text).digest() != mm[len(MAGIC) + 8:_PREFIX]:
        raise DamagedIndex(f"{path}: the header's checksum does not match")
    try:
        return json.loads(text)
    except ValueError:
        raise DamagedIndex(f"{path}: the header is not JSON") from None
