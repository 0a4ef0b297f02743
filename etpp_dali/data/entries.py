"""The entries of an index, built group by group: every file found (good or bad) with what its probe
found, then the good ones' arrays that sources read.

A group is a folder (ImageFolder), a parent folder (file list) or a shard (WebDataset). Its
:class:`Chunk` holds its entries in order; an entry is either copied from the previous index
(its file unchanged) or waits in ``todo`` for a probe. :func:`assemble` concatenates the chunks
into the arrays of the index file; :func:`records_of` and :func:`bad_of` read them back.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from etpp_dali.data.index import MappedIndex
from etpp_dali.data.probe import ProbeColumns
from etpp_dali.data.records import BadFile, RecordTable, pack_names, pack_texts

__all__ = ["Chunk", "Reasons", "assemble", "bad_of", "known_names", "records_of", "reuse_unchanged", "shallow",
           "unchanged"]

# per entry: byte size, mtime (ns), format code (0: bad), check level, reason (-1: good), pixel size, label
FIELDS = {"size": np.int64, "mtime": np.int64, "code": np.uint8, "level": np.uint8, "reason": np.int32,
          "height": np.int32, "width": np.int32, "label": np.int64}
_GOOD = ("labels", "sizes", "formats", "good_name_start", "good_name_end", "good_group")


class Reasons:
    """The distinct reasons of bad files, each stored once (entries keep its number)."""

    def __init__(self, texts: Sequence[str] = ()) -> None:
        self.texts = list(texts)
        self._ids = {t: i for i, t in enumerate(self.texts)}

    def id(self, text: str) -> int:
        if text not in self._ids:
            self._ids[text] = len(self.texts)
            self.texts.append(text)
        return self._ids[text]

    def remap(self, old: Sequence[str]) -> np.ndarray:
        """Old reason numbers -> these (index ``-1`` maps to ``-1``: keep a trailing -1)."""
        return np.array([self.id(t) for t in old] + [-1], dtype=np.int32)


class Chunk:
    """The entries of one group, in order; ``todo`` lists those still to probe."""

    def __init__(self, names: Sequence[bytes], label: int = -1, extra: Sequence[str] = (), *,
                 texts: Sequence[str] | None = None) -> None:
        self.names, _, self.ends = pack_texts(texts) if texts is not None else pack_names(names)
        n = len(self.ends)
        self.fields = {k: np.zeros(n, dtype=t) for k, t in FIELDS.items()}
        self.fields.update({k: np.zeros(n, dtype=np.int64) for k in extra})
        self.fields["reason"][:] = -1
        self.fields["label"][:] = label
        self.todo: list[int] = list(range(n))

    def texts(self, js: Sequence[int]) -> list[str]:
        """Entries ``js``'s names as the OS lists them (``str``): decoded at once where they are
        all ASCII (nearly always), else one by one."""
        if len(self.names) and int(self.names.max()) < 0x80:
            text = self.names.tobytes().decode("ascii")
            ends = self.ends.tolist()
            return [text[(ends[j - 1] if j else 0):ends[j]] for j in js]
        return [os.fsdecode(self.name(j)) for j in js]

    @classmethod
    def copy_of(cls, old: MappedIndex, start: int, end: int, reason_map: np.ndarray) -> Chunk:
        """Entries ``start:end`` of ``old`` as they are (nothing to probe)."""
        chunk = cls([])
        first = int(old["name_end"][start - 1]) if start else 0
        chunk.names = np.array(old["names"][first:int(old["name_end"][end - 1]) if end > start else first])
        chunk.ends = np.array(old["name_end"][start:end]) - first
        chunk.fields = {k: np.array(old[k][start:end]) for k in old.header["fields"]}
        chunk.fields["reason"] = reason_map[chunk.fields["reason"]]
        return chunk

    def __len__(self) -> int:
        return len(self.ends)

    def name(self, j: int) -> bytes:
        return self.names[int(self.ends[j - 1]) if j else 0:int(self.ends[j])].tobytes()

    def take_old(self, js: Sequence[int], old: MappedIndex, positions: Sequence[int], reason_map: np.ndarray) -> None:
        """Entries ``js`` are ``old``'s entries at ``positions`` (their files unchanged)."""
        if len(js):
            js, pos = np.asarray(js, dtype=np.int64), np.asarray(positions, dtype=np.int64)
            for k, column in self.fields.items():
                if k != "label":  # the label is the new listing's
                    column[js] = old[k][pos]
            self.fields["reason"][js] = reason_map[self.fields["reason"][js]]

    def fill(self, js: Sequence[int], probes: ProbeColumns, level: int, reasons: Reasons) -> None:
        """Entries ``js`` were probed to ``level`` with these results."""
        if not len(js):
            return
        f, js = self.fields, np.asarray(js, dtype=np.int64)
        for k in ("size", "mtime", "code", "height", "width"):
            f[k][js] = getattr(probes, k)
        f["level"][js] = level
        f["reason"][js] = -1
        f["reason"][js[probes.bad]] = [reasons.id(text) for text in probes.why]


def known_names(old: MappedIndex, start: int, end: int) -> dict[bytes, int]:
    """Entry name -> position, for ``old``'s entries ``start:end``."""
    names, ends = old["names"], old["name_end"]
    first = int(ends[start - 1]) if start else 0
    out = {}
    for pos in range(start, end):
        out[names[first:int(ends[pos])].tobytes()] = pos
        first = int(ends[pos])
    return out


def reuse_unchanged(chunk: Chunk, candidates: Iterable[tuple[int, int, str]], old: MappedIndex,
                    reason_map: np.ndarray, level: int, racy_ns: int) -> None:
    """For each ``(entry, old position, path)``, take the old entry when its file is unchanged
    (statted; see :func:`unchanged`); every other entry of ``chunk`` stays to probe."""
    keep = []
    for j, pos, path in candidates:
        try:
            if unchanged(old, pos, os.stat(path), level, racy_ns):
                keep.append((j, pos))
        except OSError:
            continue
    chunk.take_old([j for j, _ in keep], old, [pos for _, pos in keep], reason_map)
    kept = {j for j, _ in keep}
    chunk.todo = [j for j in range(len(chunk)) if j not in kept]


def shallow(idx: MappedIndex, level: int) -> int:
    """How many good entries of ``idx`` were checked less deeply than ``level``."""
    return int(np.count_nonzero((idx["code"] > 0) & (idx["level"] < level)))


def unchanged(old: MappedIndex, pos: int, st: os.stat_result, level: int, racy_ns: int) -> bool:
    """Whether ``old``'s entry ``pos`` still describes the file that ``st`` stats, checked at
    least to ``level`` (a bad file's verdict stands at any level): same size and mtime, and an
    mtime not so close to the old listing that a later change could share it."""
    mtime = int(old["mtime"][pos])
    return (int(old["size"][pos]) == st.st_size and mtime == st.st_mtime_ns and mtime < racy_ns
            and (old["code"][pos] == 0 or old["level"][pos] >= level))


def assemble(chunks: Sequence[Chunk], fields: Sequence[str], extra_good: Sequence[str] = (),
             group: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays of an index of ``chunks``: every entry's ``fields``, names and group (chunk
    ``g``'s entries are in group ``g``, unless ``group`` gives each entry's), and the good
    entries' arrays (``extra_good`` fields copied for them too)."""
    counts = np.array([len(c) for c in chunks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(c.names) for c in chunks])]).astype(np.int64)
    arrays: dict[str, np.ndarray] = {
        "names": np.concatenate([c.names for c in chunks] + [np.zeros(1, np.uint8)]),
        "name_end": np.concatenate([c.ends + o for c, o in zip(chunks, offsets)] + [np.zeros(0, np.int64)]),
        "group": np.repeat(np.arange(len(chunks), dtype=np.int32), counts) if group is None else group,
    }
    for k in fields:
        arrays[k] = np.concatenate([c.fields[k] for c in chunks] + [np.zeros(0, FIELDS.get(k, np.int64))])
    good = np.flatnonzero(arrays["code"] > 0)
    starts = np.concatenate([[0], arrays["name_end"][:-1]]).astype(np.int64)
    arrays.update(labels=arrays["label"][good],
                  sizes=np.stack([arrays["height"][good], arrays["width"][good]], axis=1).astype(np.int64),
                  formats=arrays["code"][good], good_name_start=starts[good], good_name_end=arrays["name_end"][good],
                  good_group=arrays["group"][good])
    for k in extra_good:
        arrays[f"good_{k}"] = arrays[k][good]
    return arrays


def records_of(idx: MappedIndex, prefixes: Sequence[str], tar: bool = False) -> RecordTable:
    """The good images of ``idx`` as a table of views (nothing copied); group ``g``'s paths start
    with ``prefixes[g]``."""
    a: Any = idx.arrays
    labels, sizes, formats, start, end, group = (a[k] for k in _GOOD)
    if tar:
        return RecordTable(prefixes, a["names"], start, end, group, labels, sizes, formats,
                           a["good_offset"], a["good_size"])
    return RecordTable(prefixes, a["names"], start, end, group, labels, sizes, formats)


def bad_of(idx: MappedIndex, prefixes: Sequence[str]) -> list[BadFile]:
    """Every bad entry of ``idx``, in order, with its reason."""
    a, reasons = idx.arrays, idx.header["reasons"]
    out = []
    for pos in np.flatnonzero(a["code"] == 0):
        start = int(a["name_end"][pos - 1]) if pos else 0
        name = os.fsdecode(a["names"][start:int(a["name_end"][pos])].tobytes())
        out.append(BadFile(prefixes[int(a["group"][pos])] + name, reasons[int(a["reason"][pos])]))
    return out
