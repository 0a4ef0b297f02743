"""Inspecting one image file: its format and pixel size, and whether the decoders will take it.

Three depths (``level``): ``TRUST`` reads the header only (format and size); ``CHECK`` also
reads the end of the file (a JPEG's EOI marker, a PNG's IEND chunk, which catches truncated
downloads) and verifies PNG chunk checksums; ``DEEP`` decodes every pixel (slow; catches damage
in the middle of a JPEG).

Well-formed JPEGs, nearly all of ImageNet, take a fast path: one read of the first bytes, a walk
over the marker segments up to the start of scan, one read of the last bytes. The walk checks
what Pillow's header parser checks (frame, quantisation tables, the APPn blocks it reads), except
EXIF metadata, which the decoders do not need; anything it does not recognise goes to Pillow,
whose verdict and reason then stand. A scan walks many headers at once
(:mod:`etpp_dali.data.headers`), with the same verdicts.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL.Image import DecompressionBombError

from etpp_dali.data.records import FORMATS, DataError, format_code

__all__ = ["TRUST", "CHECK", "DEEP", "inspect_image", "jpeg_fast", "probe_path", "probe_range", "probe_bytes", "Probe",
           "ProbeColumns"]

TRUST, CHECK, DEEP = 0, 1, 2
HEAD_BYTES = 4096    # first read: holds the whole header of a plain JPEG
_HEAD_MAX = 1 << 20  # headers longer than this (huge EXIF or ICC blocks) go to Pillow
TAIL_BYTES = 4096    # where the end-of-image marker is looked for (as Pillow-based checks did)
SOF_MARKERS = (0xC0, 0xC1, 0xC2)  # baseline, extended, progressive: the frames Pillow names "JPEG"
INSPECTED_MARKERS = {0xDB, 0xE0, 0xE2, 0xED, 0xEE}  # DQT and the APPn whose content Pillow acts on
# + DHT, DRI, COM, APPn: the segments the walk steps over
KNOWN_MARKERS = {0xC4, 0xDD, 0xFE} | set(range(0xE0, 0xF0)) | INSPECTED_MARKERS | set(SOF_MARKERS)
_NEED_MORE = -1

# (size, mtime_ns, format code, height, width, reason): code 0 with a reason for a bad file
Probe = tuple[int, int, int, int, int, str]


@dataclass
class ProbeColumns:
    """Probes as columns (what worker processes send back: a few arrays pickle far faster than
    thousands of tuples): sizes, mtimes, format codes, heights, widths, and for the bad files
    their places (``bad``, ascending) and reasons (``why``)."""

    size: np.ndarray
    mtime: np.ndarray
    code: np.ndarray
    height: np.ndarray
    width: np.ndarray
    bad: np.ndarray
    why: list[str]

    _DTYPES = (("size", np.int64), ("mtime", np.int64), ("code", np.uint8), ("height", np.int32),
               ("width", np.int32), ("bad", np.int64))

    @classmethod
    def of(cls, probes: Sequence[Probe]) -> ProbeColumns:
        if not probes:
            return cls(*(np.zeros(0, dtype) for _, dtype in cls._DTYPES), [])
        size, mtime, code, height, width, why = zip(*probes)
        bad = [k for k, c in enumerate(code) if not c]
        return cls(np.array(size, np.int64), np.array(mtime, np.int64), np.array(code, np.uint8),
                   np.array(height, np.int32), np.array(width, np.int32), np.array(bad, np.int64),
                   [why[k] for k in bad])

    @classmethod
    def joined(cls, parts: Sequence[ProbeColumns]) -> ProbeColumns:
        if not parts:
            return cls.of([])
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        columns = [np.concatenate([getattr(p, k) for p in parts]) for k, _ in cls._DTYPES[:-1]]
        bad = np.concatenate([p.bad + offset for p, offset in zip(parts, offsets)])
        return cls(*columns, bad, [text for p in parts for text in p.why])

    def __len__(self) -> int:
        return len(self.size)

    def part(self, start: int, end: int) -> ProbeColumns:
        """Probes ``start:end``."""
        a, b = np.searchsorted(self.bad, [start, end])
        return ProbeColumns(self.size[start:end], self.mtime[start:end], self.code[start:end],
                            self.height[start:end], self.width[start:end], self.bad[a:b] - start,
                            self.why[a:b])


def inspect_image(source: str | Path | bytes, deep: bool = False) -> tuple[str, int, int]:
    """Return ``(format, width, height)`` of an image the decoders take, else raise ``DataError``.

    ``source`` is a path or the encoded bytes. The header is read, the end of the file checked
    (JPEG EOI, PNG IEND), and PNG chunk checksums verified; ``deep`` also decodes every pixel
    (slow; catches damage in the middle of a JPEG). The error's text is what a user needs to fix
    the file.
    """
    level = DEEP if deep else CHECK
    if isinstance(source, (bytes, bytearray)):
        result = probe_bytes(bytes(source), level)
    else:
        result = probe_path(str(source), level)
    if not result[2]:
        raise DataError(result[5])
    return FORMATS[result[2] - 1], result[4], result[3]


def probe_path(path: str, level: int = CHECK) -> Probe:
    """Inspect the file at ``path`` to ``level``: ``(size, mtime_ns, format code, height, width,
    reason)``, the code 0 and a reason when the decoders will not take it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return -1, 0, 0, 0, 0, f"cannot open ({exc.strerror})"
    try:
        st = os.fstat(fd)
        return (st.st_size, st.st_mtime_ns) + probe_range(fd, 0, st.st_size, level)[2:]
    except OSError as exc:
        return -1, 0, 0, 0, 0, f"cannot read ({exc.strerror})"
    finally:
        os.close(fd)


def probe_range(fd: int, offset: int, size: int, level: int = CHECK) -> Probe:
    """:func:`probe_path` for the ``size`` bytes at ``offset`` of the open file ``fd`` (a tar
    member); the mtime is 0. Reads the first and last bytes; all of them only for Pillow."""
    head = os.pread(fd, min(size, HEAD_BYTES), offset)
    fast = jpeg_fast(head, size, level, lambda n: os.pread(fd, n, offset),
                     lambda: os.pread(fd, TAIL_BYTES, offset + size - TAIL_BYTES))
    if fast is None:
        return probe_bytes(os.pread(fd, size, offset) if size > len(head) else head, level)
    return (size, 0) + fast


def probe_bytes(data: bytes, level: int = CHECK) -> Probe:
    """:func:`probe_path` for encoded bytes in memory (a tar member); the mtime is 0."""
    size = len(data)
    fast = jpeg_fast(data[:HEAD_BYTES], size, level, lambda n: data[:n], lambda: data[-TAIL_BYTES:])
    if fast is None:
        fast = _pil_verdict(lambda: io.BytesIO(data), size, level)
    return (size, 0) + fast


def jpeg_fast(head: bytes, size: int, level: int, read_head: Callable[[int], bytes],
              read_tail: Callable[[], bytes]) -> tuple[int, int, int, str] | None:
    """The verdict on a well-formed JPEG without Pillow, or ``None`` (Pillow decides)."""
    if size == 0:
        return 0, 0, 0, "zero bytes"
    if level >= DEEP or head[:3] != b"\xff\xd8\xff":
        return None
    frame = _jpeg_frame(head)
    while frame == _NEED_MORE and len(head) < min(size, _HEAD_MAX):
        head = read_head(min(size, 4 * len(head), _HEAD_MAX))
        frame = _jpeg_frame(head)
    if not isinstance(frame, tuple):
        return None
    height, width = frame
    if height * width > Image.MAX_IMAGE_PIXELS or height < 1 or width < 1:
        return None  # Pillow's own warning, refusal or message
    if level >= CHECK and b"\xff\xd9" not in (head[-TAIL_BYTES:] if size <= len(head) else read_tail()):
        return 0, 0, 0, "truncated JPEG (no end-of-image marker)"
    return format_code("JPEG"), height, width, ""


def _jpeg_frame(buf: bytes) -> tuple[int, int] | int | None:
    """(height, width) of the last frame header before the start of scan, when every segment
    up to it is one this walk knows (else ``None``); ``_NEED_MORE`` when ``buf`` ends first."""
    pos, n, frame = 2, len(buf), None
    while True:
        if pos + 4 > n:
            return _NEED_MORE
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xDA:
            return frame
        end = pos + 2 + ((buf[pos + 2] << 8) | buf[pos + 3])
        if end < pos + 4 or marker not in KNOWN_MARKERS:
            return None
        if end > n:
            return _NEED_MORE
        if marker in SOF_MARKERS:
            if end - pos < 10 or buf[pos + 4] != 8 or buf[pos + 9] not in (1, 3, 4):
                return None  # Pillow refuses these with its own message
            frame = ((buf[pos + 5] << 8) | buf[pos + 6], (buf[pos + 7] << 8) | buf[pos + 8])
        elif marker in INSPECTED_MARKERS and not _known_segment(marker, buf, pos + 4, end):
            return None
        pos = end


def _known_segment(marker: int, buf: bytes, start: int, end: int) -> bool:
    """Whether Pillow reads the segment ``buf[start:end]`` without an error or a change of
    format (MPO)."""
    if marker == 0xDB:  # quantisation tables: Pillow checks each is complete
        while start < end:
            start += 1 + (64 if buf[start] < 16 else 128)
        return start == end
    if marker == 0xE0:
        return not buf.startswith(b"JFIF", start, end) or end - start >= 12
    if marker == 0xE2:
        return not buf.startswith(b"MPF\0", start, end)
    if marker == 0xED:
        return not buf.startswith(b"Photoshop 3.0\x00", start, end) or _photoshop_ok(buf[start:end])
    return not buf.startswith(b"Adobe", start, end) or end - start >= 12  # APP14


def _photoshop_ok(s: bytes) -> bool:
    """Whether Pillow walks these Photoshop resource blocks (APP13) without an ``IndexError``
    (which makes it take the file for no image at all): its own walk, step by step."""
    offset = 14
    try:
        while s[offset:offset + 4] == b"8BIM":
            offset += 6  # the tag and the resource code
            struct.unpack_from(">H", s, offset - 2)
            offset += 1 + s[offset]  # the name: an IndexError in Pillow too
            offset += offset & 1
            (size,) = struct.unpack_from(">I", s, offset)
            offset += 4 + size
            offset += offset & 1
    except struct.error:  # Pillow stops there, as here
        pass
    except IndexError:
        return False
    return True


def _pil_verdict(opener: Callable, size: int, level: int) -> tuple[int, int, int, str]:
    """Pillow's verdict: ``(format code, height, width, "")`` or ``(0, 0, 0, reason)``."""
    try:
        fmt, width, height = _pil_inspect(opener, size, level)
    except DataError as exc:
        return 0, 0, 0, str(exc)
    return format_code(fmt), height, width, ""


def _pil_inspect(opener: Callable, size: int, level: int) -> tuple[str, int, int]:
    if size == 0:
        raise DataError("zero bytes")
    try:
        with opener() as f, Image.open(f) as img:
            fmt = img.format or "unknown"
            width, height = img.size
            tail = b""
            if level >= CHECK:
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
    except UnidentifiedImageError:
        raise DataError("not an image (unrecognised content)") from None
    except DecompressionBombError as exc:  # a header claiming a huge size: refuse, never decode
        raise DataError(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable header ({exc})") from None
    if fmt not in FORMATS:
        raise DataError(f"{fmt} is a format the decoders do not take; convert it to JPEG or remove it")
    if width < 1 or height < 1:
        raise DataError(f"empty image ({width} x {height})")
    if level >= CHECK:
        if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
            raise DataError("truncated JPEG (no end-of-image marker)")
        if fmt == "PNG" and b"IEND" not in tail:
            raise DataError("truncated PNG (no IEND chunk)")
        if level >= DEEP or fmt == "PNG":
            _decode_fully(opener, verify_only=level < DEEP)
    return fmt, width, height


def _decode_fully(opener: Callable, verify_only: bool) -> None:
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
