"""Where encoded images come from: an ImageFolder tree, a file list, or WebDataset tar shards.

Every source is validated before any work (see :mod:`etpp_dali.data.scan`): each file the decoders
would not take is listed once with its reason and left out, and the pixel size of every good
image is known (the random-resized-crop windows are drawn in Python from it). A source's images
are arrays (:class:`~etpp_dali.data.records.RecordTable`), views of the memory-mapped index the
ranks of a node share. Reading is plain file I/O on the Python side: ``read(i)`` returns the
encoded bytes of sample ``i``, ``read_batch(indices)`` those of a batch, in one buffer.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from etpp_dali.data.entries import bad_of, records_of
from etpp_dali.data.index import MappedIndex
from etpp_dali.data.lists import list_index
from etpp_dali.data.reads import BufferPool, path_batch, read_batch
from etpp_dali.data.records import BadFile, DataError, ImageRecord, MembersView, RecordsView, RecordTable
from etpp_dali.data.scan import check_level, scan_split
from etpp_dali.data.shards import shard_index

__all__ = ["Source", "open_source", "image_folder", "file_list", "webdataset", "report_left_out"]

_REPORT_LINES = 20  # bad files named on stderr; `etpp check-data` lists them all


class Source:
    """Decodable samples: labels and sizes as arrays, bytes read on demand.

    ``Source(name, classes, records, bad, members)`` builds one from :class:`ImageRecord` objects
    (and tar ``members``: (tar path, offset, size) each); the openers below build it from an
    index (``table``, ``index``) without a Python object per image.
    """

    def __init__(self, name: str, classes: Sequence[str], records: Sequence[ImageRecord] = (),
                 bad: Sequence[BadFile] = (), members: Sequence[tuple[str, int, int]] | None = None, *,
                 table: RecordTable | None = None, index: MappedIndex | None = None) -> None:
        self.name, self.classes = name, list(classes)
        self.table = table if table is not None else RecordTable.from_records(records, members)
        self.bad = list(bad)
        self.index = index  # the mapping the table's arrays view

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict:
        """Pickled (for a worker process) with copies of the arrays, without the mapping."""
        return dict(self.__dict__, index=None)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices (read-only)."""
        return self.table.labels

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) int64 array of (height, width) (read-only)."""
        return self.table.sizes

    @property
    def records(self) -> RecordsView:
        """One :class:`ImageRecord` per image, made when asked for."""
        return RecordsView(self.table)

    @property
    def members(self) -> MembersView | None:
        """(tar path, offset, size) per image of tar shards; ``None`` for plain files."""
        return None if self.table.offsets is None else MembersView(self.table)

    def path(self, i: int) -> str:
        """Sample ``i``'s path (``shard:key`` for a tar member)."""
        return self.table.path(i)

    def read(self, i: int) -> np.ndarray:
        """The encoded bytes of sample ``i`` as a uint8 array."""
        return self.table.read(i)

    def read_batch(self, indices: Sequence[int] | np.ndarray,
                   pool: BufferPool | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        """The encoded bytes of samples ``indices`` (views into one buffer, the same bytes as
        :meth:`read`) and that buffer: :func:`etpp_dali.data.reads.read_batch`."""
        return read_batch(self.table, indices, pool)

    def path_batch(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The paths of samples ``indices`` as byte arrays (files only; see
        :func:`etpp_dali.data.reads.path_batch`): what a graph that reads its files is fed."""
        return path_batch(self.table, indices)

    @property
    def reads_files(self) -> bool:
        """Whether each sample is a file of its own (not a tar member), which DALI can read by path."""
        return self.table.offsets is None

    def subset(self, indices: Sequence[int] | np.ndarray, bad: Sequence[BadFile] = ()) -> Source:
        """The samples at ``indices``, in that order, as a source of their own."""
        return Source(self.name, self.classes, bad=bad, table=self.table.take(np.asarray(indices)), index=self.index)

    def report_bad(self, limit: int | None = None) -> str:
        """One line per skipped file (empty when there is none); at most ``limit`` lines and a
        count of the rest."""
        shown = self.bad if limit is None else self.bad[:limit]
        lines = [f"skipped {b}" for b in shown]
        if len(self.bad) > len(shown):
            lines.append(f"... and {len(self.bad) - len(shown)} more (`etpp check-data` lists them all)")
        return "\n".join(lines)


def report_left_out(source: Source, what: str | None = None) -> None:
    """Tell the user (stderr) which files of ``source`` are left out and why (the first few and a
    count); nothing when none is. ``what`` names the data in the message (default: its path)."""
    if source.bad:
        print(f"etpp: {len(source.bad)} file(s) left out of {what or source.name}:\n"
              f"{source.report_bad(_REPORT_LINES)}", file=sys.stderr)


def _from_index(name: str, idx: MappedIndex, prefixes: Sequence[str], empty: str, tar: bool = False) -> Source:
    table = records_of(idx, prefixes, tar=tar)
    if not len(table):
        raise DataError(empty)
    classes = [str(i) for i in range(int(table.labels.max()) + 1)]
    return Source(name, classes, bad=bad_of(idx, prefixes), table=table, index=idx)


def image_folder(root: str | Path, classes: Sequence[str] | None = None, *, use_cache: bool = True,
                 trust: bool = False) -> Source:
    """One split laid out as ``root/<class>/<image>``; ``trust`` reads headers only."""
    scan = scan_split(root, classes, use_cache=use_cache, trust=trust)
    if not len(scan):
        raise DataError(f"{root}: no decodable image in any class folder; check the data with `etpp check-data`")
    return Source(str(root), scan.classes, bad=scan.bad, table=scan.table, index=scan.index)


def file_list(list_file: str | Path, root: str | Path | None = None, *, use_cache: bool = True,
              trust: bool = False) -> Source:
    """A text file of ``<path> <integer label>`` lines; relative paths are under ``root``
    (default: the list file's folder). Classes are named by their label."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such file list; give a text file of '<path> <label>' lines")
    base = Path(root) if root is not None else list_file.parent
    idx = list_index(list_file, base, level=check_level(trust=trust), use_cache=use_cache)
    return _from_index(str(list_file), idx, [""] * len(idx.header["groups"]), f"{list_file}: lists no decodable image")


def _tar_paths(spec: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(spec, (str, Path)):
        spec = str(spec)
        if os.path.isdir(spec):
            paths = sorted(glob.glob(os.path.join(spec, "*.tar")))
        else:
            paths = sorted(glob.glob(spec)) if any(ch in spec for ch in "*?[") else [spec]
    else:
        paths = [str(p) for p in spec]
    if not paths:
        raise DataError(f"{spec}: matches no .tar shard; give shard paths, a glob or a folder of .tar files")
    for p in paths:
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such WebDataset shard")
    return paths


def webdataset(shards: str | Path | Sequence[str | Path], *, use_cache: bool = True, trust: bool = False) -> Source:
    """WebDataset tar shards: members ``<key>.<image ext>`` with ``<key>.cls`` (integer label).

    Shards are indexed once, in parallel (member offsets from the tar headers, each image's
    header and last bytes), and again only when a shard's size or mtime changes; samples are
    read at random with one seek each.
    """
    paths = _tar_paths(shards)
    idx = shard_index(paths, level=check_level(trust=trust), use_cache=use_cache)
    return _from_index(str(shards), idx, [f"{p}:" for p in paths],
                       f"{shards}: the shards hold no decodable image with a .cls label", tar=True)


def open_source(spec: str | Path | Sequence[str | Path], split: str = "train", *,
                classes: Sequence[str] | None = None, use_cache: bool = True, trust: bool = False) -> Source:
    """A data set from a path: an ImageFolder root (``root/<split>/`` when present, else
    ``root`` itself), a ``.txt`` file list, or ``.tar`` shards (a path, glob, folder of .tar files
    or list). A val split indexes classes like train's (``classes``); a class that train lacks
    is an error. ``trust`` reads each new file's header only (no end-of-file check).
    """
    if not isinstance(spec, (str, Path)):
        return webdataset(spec, use_cache=use_cache, trust=trust)
    path = Path(spec)
    text = str(spec)
    if text.endswith(".txt"):
        return file_list(path, use_cache=use_cache, trust=trust)
    if text.endswith(".tar") or any(ch in text for ch in "*?[") or (
            path.is_dir() and any(path.glob("*.tar")) and not (path / split).is_dir()):
        return webdataset(spec, use_cache=use_cache, trust=trust)
    if not path.exists():
        raise DataError(f"{path}: no such path; give an ImageFolder root, a .txt file list or .tar shards")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder, .txt file list or .tar shard")
    split_dir = path / split
    if split_dir.is_dir():
        if classes is not None:
            extra = sorted(set(_class_dirs(split_dir)) - set(classes))
            if extra:
                raise DataError(f"{split_dir}: class folder(s) {', '.join(extra)} are not in train/; "
                                "every val class needs training images")
        return image_folder(split_dir, classes, use_cache=use_cache, trust=trust)
    if split != "train":
        raise DataError(f"{path}: has no {split}/ folder; add one or use a validation split of train")
    return image_folder(path, classes, use_cache=use_cache, trust=trust)


def _class_dirs(root: Path) -> list[str]:
    return [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
