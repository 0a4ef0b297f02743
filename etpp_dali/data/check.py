"""``etpp check-data``: validate a data set and report what the pipeline will not take, at any size.

The scan shows a progress bar on stderr (on a terminal). The report is a summary whatever the
count of problems: a line per split, the problems counted per kind of reason, the first few, and
the file that holds the full list (one problem a line), never a million lines on the terminal.
"""

from __future__ import annotations

import collections
import hashlib
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from etpp_dali.data.scan import DatasetScan, scan_dataset
from etpp_dali.data.store import cache_dir
from etpp_dali.util.files import write_text_atomic

__all__ = ["check_data", "problem_kind", "summarise"]

SHOWN = 10  # problems printed in full


def check_data(data_dir: str | Path, *, deep: bool = False, use_cache: bool = True, problems_file: str | Path | None
               = None, echo: Callable[[str], None] = print) -> int:
    """Scan ``data_dir`` (train/ and val/, or one split), print the summary through ``echo`` and
    return the exit status: 0 when clean, 1 when a file or class is a problem. ``DataError``
    when the folder cannot be a data set. The full list goes to ``problems_file`` (default: a
    file in the cache folder named after the data set)."""
    with tqdm(unit="file", desc="checking", file=sys.stderr, disable=None, leave=False) as bar:
        scan = scan_dataset(data_dir, use_cache=use_cache, deep=deep, progress=_bar_progress(bar))
    if problems_file is None:
        digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        problems_file = cache_dir() / "checks" / f"{Path(data_dir).resolve().name}-{digest}.txt"
    for line in summarise(scan, Path(problems_file)):
        echo(line)
    return 1 if scan.problems() else 0


def _bar_progress(bar: tqdm) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if bar.total != total:  # the files listed so far: it grows while the folders are listed
            bar.total = total
        bar.update(done)
    return progress


def problem_kind(problem: str) -> str:
    """What a problem line (``path: reason``) is, without its path and details: the reason up to
    its first parenthesis (``truncated JPEG``, ``not an image``, ``empty class folder``, ...)."""
    reason = problem.split(": ", 1)[1] if ": " in problem else problem
    return reason.split(" (", 1)[0].split(";", 1)[0].strip()


def summarise(scan: DatasetScan, problems_file: Path) -> list[str]:
    """The report's lines; writes every problem to ``problems_file`` when there is one."""
    splits = [("train" if scan.val is not None or (scan.root / "train").is_dir() else ".", scan.train)]
    if scan.val is not None:
        splits.append(("val", scan.val))
    lines = [f"{name}: {len(split)} images in {len(split.classes)} classes, {len(split.bad)} bad files"
             for name, split in splits]
    problems = scan.problems()
    if not problems:
        return lines + ["clean: every file decodes"]
    try:
        write_text_atomic(problems_file, "\n".join(problems) + "\n")
        where = f"all {len(problems)} listed in {problems_file}"
    except OSError as exc:
        where = f"the full list could not be written to {problems_file} ({exc.strerror or exc})"
    lines.append(f"{len(problems)} problem(s):")
    counts = collections.Counter(problem_kind(p) for p in problems)
    lines += [f"  {n:>8}  {kind}" for kind, n in counts.most_common()]
    lines.append(f"first {min(SHOWN, len(problems))}:" if len(problems) > SHOWN else "each:")
    lines += [f"  {p}" for p in problems[:SHOWN]]
    lines.append(where)
    return lines

