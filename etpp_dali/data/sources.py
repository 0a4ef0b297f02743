"""Where encoded images come from: an ImageFolder tree, a file list, or WebDataset tar shards.

Every source is validated before any work (see :mod:`etpp_dali.data.scan`): each file the decoders
would not take is listed once with its reason and left out, and the pixel size of every good
image is known (the random-resized-crop windows are drawn in Python from it). Reading is plain
file I/O on the Python side: ``read(i)`` returns the encoded bytes of sample ``i``.
"""

from __future__ import annotations

import glob
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from etpp_dali.data.scan import BadFile, DataError, ImageRecord, ScanCache, inspect_image, scan_split

__all__ = ["Source", "open_source", "image_folder", "file_list", "webdataset", "report_left_out"]

_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm")


@dataclass
class Source:
    """Decodable samples: labels and sizes in memory, bytes read on demand."""

    name: str
    classes: list[str]
    records: list[ImageRecord]
    bad: list[BadFile] = field(default_factory=list)
    # for tar members: (tar path, offset, size) per record; None for plain files
    members: list[tuple[str, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((r.label for r in self.records), dtype=np.int64, count=len(self.records))

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) array of (height, width)."""
        return np.array([(r.height, r.width) for r in self.records], dtype=np.int64).reshape(-1, 2)

    def read(self, i: int) -> np.ndarray:
        """The encoded bytes of sample ``i`` as a uint8 array."""
        if self.members is None:
            return np.fromfile(self.records[i].path, dtype=np.uint8)
        path, offset, size = self.members[i]
        with open(path, "rb") as f:
            f.seek(offset)
            return np.frombuffer(f.read(size), dtype=np.uint8)

    def report_bad(self) -> str:
        """One line per skipped file (empty when there is none)."""
        return "\n".join(f"skipped {b}" for b in self.bad)


def report_left_out(source: Source, what: str | None = None) -> None:
    """Tell the user (stderr) which files of ``source`` are left out and why; nothing when none is.
    ``what`` names the data in the message (default: the source's path)."""
    if source.bad:
        print(f"etpp: {len(source.bad)} file(s) left out of {what or source.name}:\n{source.report_bad()}",
              file=sys.stderr)


def image_folder(root: str | Path, classes: Sequence[str] | None = None, *, use_cache: bool = True) -> Source:
    """One split laid out as ``root/<class>/<image>``."""
    scan = scan_split(root, classes, use_cache=use_cache)
    if not scan.records:
        raise DataError(f"{root}: no decodable image in any class folder; check the data with `etpp check-data`")
    return Source(str(root), scan.classes, scan.records, scan.bad)


def file_list(list_file: str | Path, root: str | Path | None = None, *, use_cache: bool = True) -> Source:
    """A text file of ``<path> <integer label>`` lines; relative paths are under ``root``
    (default: the list file's folder). Classes are named by their label."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"{list_file}: no such file list; give a text file of '<path> <label>' lines")
    base = Path(root) if root is not None else list_file.parent
    cache = ScanCache(list_file, use_cache)
    records, bad = [], []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DataError(f"{list_file}:{n}: {line!r} is not '<path> <label>' with a label >= 0")
        path = Path(parts[0]) if os.path.isabs(parts[0]) else base / parts[0]
        try:
            st = path.stat()
        except OSError:
            bad.append(BadFile(str(path), "missing file"))
            continue
        result = cache.inspect(str(path), path, st)
        if result[0] == "ok":
            records.append(ImageRecord(str(path), int(parts[1]), result[2], result[3], result[1]))
        else:
            bad.append(BadFile(str(path), result[1]))
    cache.save()
    if not records:
        raise DataError(f"{list_file}: lists no decodable image")
    n_classes = max(r.label for r in records) + 1
    return Source(str(list_file), [str(i) for i in range(n_classes)], records, bad)


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


def webdataset(shards: str | Path | Sequence[str | Path], *, use_cache: bool = True) -> Source:
    """WebDataset tar shards: members ``<key>.<image ext>`` with ``<key>.cls`` (integer label).

    Shards are indexed once (member offsets and image sizes), cached by shard size and mtime,
    so samples are read at random with one seek each.
    """
    records, members, bad = [], [], []
    for path in _tar_paths(shards):
        cache = ScanCache(Path(path + ".etpp-index"), use_cache)
        st = os.stat(path)
        hit = cache.lookup("index", st)
        if hit is None:
            entries = _index_tar(path)
            cache.store("index", st, [entries])
            cache.save()
        else:
            entries = hit[2]
        for key, offset, size, label, status in entries:
            where = f"{path}:{key}"
            if status[0] != "ok":
                bad.append(BadFile(where, status[1]))
                continue
            records.append(ImageRecord(where, label, status[2], status[3], status[1]))
            members.append((path, offset, size))
    if not records:
        raise DataError(f"{shards}: the shards hold no decodable image with a .cls label")
    n_classes = max(r.label for r in records) + 1
    return Source(str(shards), [str(i) for i in range(n_classes)], records, bad, members)


def _index_tar(path: str) -> list:
    """[key, data offset, size, label, status] per image member; status as in the scan cache."""
    images: dict[str, tuple[int, int]] = {}  # key -> (data offset, size)
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
                elif ext in _WDS_IMAGE_EXTS:
                    images[key] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar shard ({exc})") from None
    out = []
    with open(path, "rb") as f:
        for key, (offset, size) in images.items():
            if key in problems or key not in labels:
                out.append([key, offset, size, -1, ["bad", problems.get(key, "no .cls label member")]])
                continue
            f.seek(offset)
            out.append([key, offset, size, labels[key], _inspect_bytes(f.read(size))])
    return out


def _inspect_bytes(data: bytes) -> list:
    try:
        fmt, w, h = inspect_image(data)
    except DataError as exc:
        return ["bad", str(exc)]
    return ["ok", fmt, w, h]


def open_source(spec: str | Path | Sequence[str | Path], split: str = "train", *,
                classes: Sequence[str] | None = None, use_cache: bool = True) -> Source:
    """A data set from a path: an ImageFolder root (``root/<split>/`` when present, else
    ``root`` itself), a ``.txt`` file list, or ``.tar`` shards (a path, glob, folder of .tar files
    or list). A val split indexes classes like train's (``classes``); a class that train lacks
    is an error.
    """
    if not isinstance(spec, (str, Path)):
        return webdataset(spec, use_cache=use_cache)
    path = Path(spec)
    text = str(spec)
    if text.endswith(".txt"):
        return file_list(path, use_cache=use_cache)
    if text.endswith(".tar") or any(ch in text for ch in "*?[") or (
            path.is_dir() and any(path.glob("*.tar")) and not (path / split).is_dir()):
        return webdataset(spec, use_cache=use_cache)
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
        return image_folder(split_dir, classes, use_cache=use_cache)
    if split != "train":
        raise DataError(f"{path}: has no {split}/ folder; add one or use a validation split of train")
    return image_folder(path, classes, use_cache=use_cache)


def _class_dirs(root: Path) -> list[str]:
    return [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]

