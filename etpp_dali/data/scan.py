"""Data sets on disk: scan and validate an ImageFolder tree.

Scanning reads each file's header (format and size, no full decode) and checks that the file
ends where its format says it must (a JPEG's EOI marker, a PNG's IEND chunk), which catches
truncated downloads (:mod:`etpp_dali.data.probe`). The results are kept in a compact index per
split (:mod:`etpp_dali.data.folders`), so a second scan costs a stat per folder, or per file
where ``verify_files`` asks for it, and only new or changed files are read again. Nothing here
writes into the data folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from etpp_dali.data.entries import bad_of, records_of
from etpp_dali.data.folders import Progress, folder_index
from etpp_dali.data.index import MappedIndex
from etpp_dali.data.probe import CHECK, DEEP, TRUST, inspect_image
from etpp_dali.data.records import FORMATS, BadFile, DataError, ImageRecord, RecordsView, RecordTable
from etpp_dali.data.store import cache_dir

__all__ = [
    "BadFile",
    "DataError",
    "DatasetScan",
    "ImageRecord",
    "SplitScan",
    "cache_dir",
    "check_level",
    "inspect_image",
    "scan_dataset",
    "scan_split",
]

DECODABLE_FORMATS = set(FORMATS)


def check_level(deep: bool = False, trust: bool = False) -> int:
    """The probe level of the flags: ``deep`` decodes every image, ``trust`` reads headers only."""
    if deep and trust:
        raise DataError("deep and trust contradict each other: a deep check decodes what trust would not read")
    return DEEP if deep else TRUST if trust else CHECK


@dataclass
class SplitScan:
    """One split (a folder of class folders) after validation: the good images as a table
    (``records``: one :class:`ImageRecord` each, made on demand) and the bad files."""

    root: Path
    classes: list[str]
    table: RecordTable
    bad: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    index: MappedIndex | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def records(self) -> RecordsView:
        return RecordsView(self.table)

    def problems(self) -> list[str]:
        out = [str(b) for b in self.bad]
        out += [f"{self.root / c}: empty class folder (no decodable image)" for c in self.empty_classes]
        return out


@dataclass
class DatasetScan:
    """A data set root: train/ and val/ splits (or one split when the root holds classes)."""

    root: Path
    train: SplitScan
    val: SplitScan | None
    val_only_classes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def problems(self) -> list[str]:
        out = self.train.problems()
        if self.val is not None:
            out += self.val.problems()
        out += [f"{self.root / 'val' / c}: class {c!r} is in val/ but not in train/"
                for c in self.val_only_classes]
        return out


def _list_classes(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def scan_split(root: str | Path, classes: Sequence[str] | None = None, *, use_cache: bool = True,
               deep: bool = False, trust: bool = False, verify_files: bool = False,
               progress: Progress | None = None) -> SplitScan:
    """Validate every file under ``root/<class>/``; ``classes`` fixes the label order.

    ``deep`` decodes every image fully, ``trust`` reads headers only (see :mod:`.probe`);
    ``verify_files`` stats every file to find contents changed in place (else a stat per folder
    decides what changed); ``use_cache=False`` neither reads nor writes the index;
    ``progress(done, total)`` is called as files are read.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give an ImageFolder root (one folder per class)")
    found = _list_classes(root)
    classes = list(classes) if classes is not None else found
    if not classes:
        raise DataError(f"{root}: holds no class folders; lay the images out as {root}/<class>/<image>")
    idx = folder_index(root, classes, found, level=check_level(deep, trust), verify_files=verify_files,
                       use_cache=use_cache, progress=progress)
    prefixes = [str(root / g[0]) + os.sep for g in idx.header["groups"]]
    table = records_of(idx, prefixes)
    counts = np.bincount(table.labels, minlength=len(classes)) if len(table) else np.zeros(len(classes), np.int64)
    label = {c: i for i, c in enumerate(classes)}
    empty = [c for c in found if c in label and not counts[label[c]]]
    return SplitScan(root, classes, table, bad_of(idx, prefixes), empty, idx)


def scan_dataset(root: str | Path, *, use_cache: bool = True, deep: bool = False, trust: bool = False,
                 verify_files: bool = True, progress: Progress | None = None) -> DatasetScan:
    """Scan ``root/train`` and ``root/val`` (or ``root`` itself when it holds class folders).

    Val classes are indexed like train's, so labels agree; a val class that train lacks is a
    problem, reported in :meth:`DatasetScan.problems`. Every file is statted (``verify_files``),
    so a file changed in place is read again; the other flags are :func:`scan_split`'s.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give a data set root with train/ (and val/) inside")
    options = dict(use_cache=use_cache, deep=deep, trust=trust, verify_files=verify_files, progress=progress)
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        if val_dir.is_dir():
            raise DataError(f"{root}: has val/ but no train/; add the training images under {train_dir}")
        return DatasetScan(root, scan_split(root, **options), None)
    train = scan_split(train_dir, **options)
    val = None
    val_only: list[str] = []
    if val_dir.is_dir():
        val_classes = _list_classes(val_dir)
        val_only = [c for c in val_classes if c not in set(train.classes)]
        val = scan_split(val_dir, train.classes, **options)
        # classes with no val images are fine (a small val split); only missing train ones matter
        val.empty_classes = [c for c in val.empty_classes if c in val_classes]
    return DatasetScan(root, train, val, val_only)
