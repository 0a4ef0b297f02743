"""The records of a source as arrays: one entry per image, no Python object per image.

A :class:`RecordTable` holds the good images of a source: where each one's path is (a group
prefix, a folder or a shard, plus a name in one byte buffer), its label, its (height, width) and
its format, and for tar members the byte range. The arrays may be views of a memory-mapped index
(:mod:`etpp_dali.data.index`), so every rank of a node shares one copy through the page cache.
:class:`ImageRecord` objects are made one at a time, on demand (:meth:`RecordTable.record`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["BadFile", "DataError", "FORMATS", "ImageRecord", "MembersView", "RecordTable", "RecordsView", "format_code",
           "pack_names", "pack_texts"]

# PIL format names of what DALI's decoders (nvImageCodec, CPU and GPU) take; a format's code is
# its place in this tuple plus one (0: not decodable)
FORMATS = ("BMP", "JPEG", "JPEG2000", "MPO", "PNG", "PPM", "TIFF", "WEBP")


def format_code(name: str) -> int:
    """The code of a decodable format name (see :data:`FORMATS`)."""
    return FORMATS.index(name) + 1


class DataError(ValueError):
    """A data set that cannot be used; the message names the path and what to do."""


@dataclass(frozen=True)
class ImageRecord:
    """One decodable image: its path, class index and pixel size."""

    path: str
    label: int
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class BadFile:
    """A file the pipeline will not decode, with the reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class RecordTable:
    """The good images of a source, as arrays (see the module docstring).

    ``prefixes[g] + names[i]`` is the path of image ``i`` in group ``g``; ``name_start``/``name_end``
    are its name's byte range in ``names``. ``offsets`` and ``nbytes`` (tar members only) are the
    image's byte range inside the file of its group.
    """

    def __init__(self, prefixes: Sequence[str], names: np.ndarray, name_start: np.ndarray, name_end: np.ndarray,
                 groups: np.ndarray, labels: np.ndarray, sizes: np.ndarray, formats: np.ndarray,
                 offsets: np.ndarray | None = None, nbytes: np.ndarray | None = None) -> None:
        self.prefixes = list(prefixes)
        self.names, self.name_start, self.name_end, self.groups = names, name_start, name_end, groups
        self.labels, self.sizes, self.formats = labels, sizes, formats
        self.offsets, self.nbytes = offsets, nbytes
        self._prefix_bytes: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        """Image ``i``'s name inside its group (a path below its folder, a tar member key)."""
        return str(self.names[self.name_start.item(i):self.name_end.item(i)].tobytes(), "utf-8", "surrogateescape")

    @property
    def prefix_bytes(self) -> list[bytes]:
        """The group prefixes as the OS takes them (names are stored so already)."""
        if self._prefix_bytes is None:
            self._prefix_bytes = [os.fsencode(p) for p in self.prefixes]
        return self._prefix_bytes

    def group_path(self, i: int) -> str:
        """The file image ``i`` lives in: its own path, or its tar shard's."""
        return self.path(i) if self.offsets is None else self.prefixes[self.groups[i]][:-1]

    def path(self, i: int) -> str:
        """Image ``i``'s path (``shard:key`` for a tar member)."""
        return self.prefixes[self.groups.item(i)] + self.name(i)

    def record(self, i: int) -> ImageRecord:
        height, width = (int(v) for v in self.sizes[i])
        return ImageRecord(self.path(i), int(self.labels[i]), width, height, FORMATS[int(self.formats[i]) - 1])

    def read(self, i: int) -> np.ndarray:
        """The encoded bytes of image ``i`` as a uint8 array."""
        if self.offsets is None:
            return np.fromfile(self.path(i), dtype=np.uint8)
        with open(self.group_path(i), "rb") as f:
            f.seek(int(self.offsets[i]))
            return np.frombuffer(f.read(int(self.nbytes[i])), dtype=np.uint8)

    def take(self, indices: np.ndarray) -> RecordTable:
        """The images at ``indices``, in that order (arrays copied; the name buffer shared)."""
        idx = np.asarray(indices, dtype=np.int64)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(a[idx])

        return RecordTable(self.prefixes, self.names, pick(self.name_start), pick(self.name_end), pick(self.groups),
                           pick(self.labels), pick(self.sizes), pick(self.formats), pick(self.offsets),
                           pick(self.nbytes))

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord],
                     members: Sequence[tuple[str, int, int]] | None = None) -> RecordTable:
        """A table of ``records`` (paths kept whole); ``members``: (tar path, offset, size) each."""
        names, starts, ends = pack_names([os.fsencode(r.path) for r in records])
        table = cls([""], names, starts, ends, np.zeros(len(records), np.int32),
                    np.array([r.label for r in records], dtype=np.int64),
                    np.array([(r.height, r.width) for r in records], dtype=np.int64).reshape(-1, 2),
                    np.array([format_code(r.format) for r in records], dtype=np.uint8))
        if members is not None:
            shards = sorted({m[0] for m in members})
            table.prefixes = [""] + [f"{s}:" for s in shards]
            table.groups = np.array([1 + shards.index(m[0]) for m in members], dtype=np.int32)
            keys = [os.fsencode(r.path.rpartition(":")[2]) for r in records]
            table.names, table.name_start, table.name_end = pack_names(keys)
            table.offsets = np.array([m[1] for m in members], dtype=np.int64)
            table.nbytes = np.array([m[2] for m in members], dtype=np.int64)
        return table


def pack_names(encoded: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Names in one byte buffer: ``(buffer, starts, ends)``."""
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends - lengths, ends


def pack_texts(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pack_names` of file names as the OS gives them (``str``), each encoded as
    ``os.fsencode`` does, in one pass (a file name holds no NUL, which separates them here)."""
    if not names:
        return pack_names([])
    joined = np.frombuffer(os.fsencode("\0".join(names) + "\0"), dtype=np.uint8)
    nul = np.flatnonzero(joined == 0)
    ends = nul - np.arange(len(nul))
    starts = np.concatenate([[0], ends[:-1]])
    return np.ascontiguousarray(joined[joined != 0]), starts, ends


class _TableView(Sequence[Any]):
    """A read-only sequence of one item per image of a table, each made when asked for."""

    def __init__(self, table: RecordTable) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._item(int(i))

    def _item(self, i: int) -> Any:
        raise NotImplementedError


class RecordsView(_TableView):
    """``source.records`` of earlier releases: one :class:`ImageRecord` per image (iterating over
    millions of them is slow: use the table's arrays)."""

    def _item(self, i: int) -> ImageRecord:
        return self._table.record(i)


class MembersView(_TableView):
    """``source.members`` of earlier releases: (tar path, offset, size) of each tar member."""

    def _item(self, i: int) -> tuple[str, int, int]:
        t = self._table
        return t.group_path(i), int(t.offsets[i]), int(t.nbytes[i])
