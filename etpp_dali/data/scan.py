"""Data sets on disk: scan and validate an ImageFolder tree.

Scanning reads each file's header (format and size, no full decode) and checks that the file
ends where its format says it must (a JPEG's EOI marker, a PNG's IEND chunk), which catches
truncated downloads. Results are cached by (path, size, mtime), so a second scan of ImageNet
costs one ``stat`` per file. Nothing here writes into the data folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from etpp_dali.util.files import write_text_atomic
from etpp_dali.util.threads import map_threads, usable_cores

__all__ = [
    "BadFile",
    "DataError",
    "DatasetScan",
    "ImageRecord",
    "SplitScan",
    "cache_dir",
    "inspect_image",
    "scan_dataset",
    "scan_split",
]

# PIL format names of what DALI's decoders (nvImageCodec, CPU and GPU) take.
DECODABLE_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "JPEG2000", "PPM"}
_SCAN_VERSION = 2


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


@dataclass
class SplitScan:
    """One split (a folder of class folders) after validation."""

    root: Path
    classes: list[str]
    records: list[ImageRecord] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

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


# ---------------------------------------------------------------------------------- files
def inspect_image(source: str | Path | bytes, deep: bool = False) -> tuple[str, int, int]:
    """Return ``(format, width, height)`` of an image the decoders take, else raise ``DataError``.

    ``source`` is a path or the encoded bytes. The header is read, the end of the file checked
    (JPEG EOI, PNG IEND), and PNG chunk checksums verified; ``deep`` also decodes every pixel
    (slow; catches damage in the middle of a JPEG). The error's text is what a user needs to fix
    the file.
    """
    if isinstance(source, (bytes, bytearray)):
        size = len(source)
        opener, tail = (lambda: io.BytesIO(source)), bytes(source[-4096:])
    else:
        try:
            size = Path(source).stat().st_size
        except OSError as exc:
            raise DataError(f"cannot stat ({exc.strerror})") from None
        opener, tail = (lambda: open(source, "rb")), b""
    if size == 0:
        raise DataError("zero bytes")
    try:
        with opener() as f, Image.open(f) as img:
            fmt = img.format or "unknown"
            width, height = img.size
            if not tail:
                f.seek(max(0, size - 4096))
                tail = f.read()
    except UnidentifiedImageError:
        raise DataError("not an image (unrecognised content)") from None
    except DecompressionBombError as exc:  # a header claiming a huge size: refuse, never decode
        raise DataError(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable header ({exc})") from None
    if fmt not in DECODABLE_FORMATS:
        raise DataError(f"{fmt} is a format the decoders do not take; convert it to JPEG or remove it")
    if width < 1 or height < 1:
        raise DataError(f"empty image ({width} x {height})")
    if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
        raise DataError("truncated JPEG (no end-of-image marker)")
    if fmt == "PNG" and b"IEND" not in tail:
        raise DataError("truncated PNG (no IEND chunk)")
    if deep or fmt == "PNG":
        _decode_fully(opener, verify_only=not deep)
    return fmt, width, height


def _decode_fully(opener, verify_only: bool) -> None:
    """PIL's checksum verification (PNG) or a full decode; a failure becomes ``DataError``."""
    try:
        with opener() as f, Image.open(f) as img:
            if verify_only:
                img.verify()
            else:
                img.load()
    except Exception as exc:  # PIL raises many types for damaged data
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"damaged image data ({first})") from None


def cache_dir() -> Path:
    """Where the project caches scans and the demo set (``ETPP_CACHE`` overrides)."""
    root = os.environ.get("ETPP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "etpp-dali")
    return Path(root)


class ScanCache:
    """Per-file validation results keyed by (size, mtime), one JSON file per split root."""

    def __init__(self, root: Path, enabled: bool) -> None:
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
        self.path = cache_dir() / "scans" / f"{key}.json"
        self.enabled = enabled
        self.entries: dict[str, list] = {}
        self.dirty = False
        if enabled and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == _SCAN_VERSION:
                    self.entries = data["entries"]
            except (OSError, ValueError, KeyError):
                self.entries = {}  # a damaged cache is rebuilt, never trusted

    def lookup(self, rel: str, st: os.stat_result) -> list | None:
        hit = self.entries.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit
        return None

    def store(self, rel: str, st: os.stat_result, result: list) -> None:
        self.entries[rel] = [st.st_size, st.st_mtime_ns, *result]  # one dict store: atomic under the GIL
        self.dirty = True

    def inspect(self, key: str, path: Path, st: os.stat_result, deep: bool = False) -> list:
        """``["ok", format, width, height, deep]`` or ``["bad", reason]`` for ``path``: from the
        cache when its size and mtime are unchanged (and it was checked at least as deeply),
        else by :func:`inspect_image` (then cached)."""
        hit = self.lookup(key, st)
        if hit is not None and (hit[2] == "bad" or hit[-1] >= int(deep)):
            return hit[2:]
        try:
            fmt, w, h = inspect_image(path, deep=deep)
            result = ["ok", fmt, w, h, int(deep)]
        except DataError as exc:
            result = ["bad", str(exc)]
        self.store(key, st, result)
        return result

    def save(self) -> None:
        if not (self.enabled and self.dirty):
            return
        try:
            write_text_atomic(self.path, json.dumps({"version": _SCAN_VERSION, "entries": self.entries}))
        except OSError:
            pass  # a cache that cannot be written only costs time next run


def _list_classes(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def scan_split(root: str | Path, classes: Sequence[str] | None = None, *, use_cache: bool = True,
               deep: bool = False) -> SplitScan:
    """Validate every file under ``root/<class>/``; ``classes`` fixes the label order;
    ``deep`` decodes every image fully (see :func:`inspect_image`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give an ImageFolder root (one folder per class)")
    found = _list_classes(root)
    classes = list(classes) if classes is not None else found
    if not classes:
        raise DataError(f"{root}: holds no class folders; lay the images out as {root}/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    cache = ScanCache(root, use_cache)
    scan = SplitScan(root=root, classes=classes)
    files: list[tuple[str, Path, int]] = []  # (class, path, label) in a stable order
    for cls in found:
        if cls not in index:
            continue  # a val-only class: reported by scan_dataset
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [(cls, Path(dirpath) / n, index[cls]) for n in sorted(filenames) if not n.startswith(".")]
    # first scans are I/O- and decoder-bound (Pillow releases the GIL); cached ones cost a stat
    results = map_threads(lambda item: _inspect_cached(cache, root, item[1], deep), files,
                          workers=min(8, 2 * usable_cores()), min_items=64)
    good: dict[str, int] = {}
    for (cls, path, label), result in zip(files, results):
        if result[0] == "ok":
            scan.records.append(ImageRecord(str(path), label, result[2], result[3], result[1]))
            good[cls] = good.get(cls, 0) + 1
        else:
            scan.bad.append(BadFile(str(path), result[1]))
    scan.empty_classes = [c for c in found if c in index and not good.get(c)]
    cache.save()
    return scan


def _inspect_cached(cache: ScanCache, root: Path, path: Path, deep: bool) -> list:
    try:
        st = path.stat()
    except OSError as exc:
        return ["bad", f"cannot stat ({exc.strerror})"]
    return cache.inspect(str(path.relative_to(root)), path, st, deep)


def scan_dataset(root: str | Path, *, use_cache: bool = True, deep: bool = False) -> DatasetScan:
    """Scan ``root/train`` and ``root/val`` (or ``root`` itself when it holds class folders).

    Val classes are indexed like train's, so labels agree; a val class that train lacks is a
    problem, reported in :meth:`DatasetScan.problems`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; give a data set root with train/ (and val/) inside")
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        if val_dir.is_dir():
            raise DataError(f"{root}: has val/ but no train/; add the training images under {train_dir}")
        return DatasetScan(root, scan_split(root, use_cache=use_cache, deep=deep), None)
    train = scan_split(train_dir, use_cache=use_cache, deep=deep)
    val = None
    val_only: list[str] = []
    if val_dir.is_dir():
        val_classes = _list_classes(val_dir)
        val_only = [c for c in val_classes if c not in set(train.classes)]
        val = scan_split(val_dir, train.classes, use_cache=use_cache, deep=deep)
        # classes with no val images are fine (a small val split); only missing train ones matter
        val.empty_classes = [c for c in val.empty_classes if c in val_classes]
    return DatasetScan(root, train, val, val_only)
