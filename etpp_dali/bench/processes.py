"""What the loader benchmark reads about processes from ``/proc``: CPU seconds, descendants,
process-group members and a run marker in the environment; and the one line a failed window's
output is reported by.

Linux only (the benchmark's isolation record needs it); elsewhere every reading is empty and
the record says so. No torch or DALI import: the benchmark's parent process stays light.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStat", "proc_stat", "descendants", "group_members", "marked_processes", "HAS_PROC", "RUN_MARKER",
           "error_line"]

HAS_PROC = Path("/proc/self/stat").is_file()
RUN_MARKER = "ETPP_BENCH_RUN"  # set by the parent for each window process; workers inherit it
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ProcStat:
    """One process: parent, group, CPU seconds so far, start time (clock ticks since boot: with
    the pid it names the process even if the pid is later reused) and resident memory."""

    pid: int
    ppid: int
    pgid: int
    cpu_s: float
    start: int
    rss_mb: float


def proc_stat(pid: int) -> ProcStat | None:
    """The process's ``/proc/<pid>/stat``, or None when it is gone (or there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid 4, pgrp 5, utime 14, stime 15, starttime 22, rss 24
    return ProcStat(pid, int(fields[1]), int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK,
                    int(fields[19]), int(fields[21]) * _PAGE / 2**20)


def _all_stats() -> list[ProcStat]:
    if not HAS_PROC:
        return []
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                out.append(st)
    return out


def descendants(pid: int) -> list[ProcStat]:
    """Every live process below ``pid`` (children, their children, ...)."""
    stats = _all_stats()
    children: dict[int, list[ProcStat]] = {}
    for st in stats:
        children.setdefault(st.ppid, []).append(st)
    out, todo = [], [pid]
    while todo:
        for st in children.get(todo.pop(), []):
            out.append(st)
            todo.append(st.pid)
    return out


def group_members(pgid: int) -> list[ProcStat]:
    """Every live process of process group ``pgid`` (zombies included until reaped)."""
    return [st for st in _all_stats() if st.pgid == pgid]


def marked_processes(variable: str, value: str) -> list[int]:
    """Pids of the processes whose environment holds ``variable=value`` (the ones this user may
    read). The benchmark marks each loader process this way; its worker processes inherit it."""
    needle = f"{variable}={value}".encode()
    out = []
    for st in _all_stats():
        try:
            env = Path(f"/proc/{st.pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            out.append(st.pid)
    return out


_ERROR_LINE = re.compile(r"(\w+(?:Error|Exception|Interrupt|Exit)): (.+)")


def error_line(text: str) -> str:
    """One line for a table: the innermost ``SomeError: message`` of an error's text (DALI wraps
    the Python error of an operator in pages of context), else its first line."""
    found = [m.group(0) for m in map(_ERROR_LINE.search, text.splitlines()) if m]
    return (found[-1] if found else text.strip().splitlines()[0] if text.strip() else "unknown error")[:300]
