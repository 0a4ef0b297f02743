"""One timed window of the loader benchmark, in a process of its own.

``python -m etpp_dali.bench.window SPEC.json RESULT.json``: build the loader the spec names,
warm it up (its prefetch depth plus ``warmup`` batches, so whatever it prepared before the
window is used up), then time batches until both ``min_batches`` and ``min_seconds`` are
reached. The result records the figure and how it was made: the window's wall-clock start and
end, the worker processes alive in it (pids with start times) and the CPU seconds this process
and its workers spent in it, any other process of the same benchmark run seen alive at its
start or end, and the peak memory. Then the loader is closed and its workers are waited for.
On an error the result holds the error instead, and the exit status is 1.

The loaders are built by the module of their family (:func:`~etpp_dali.bench.loaders.window_module`:
:mod:`etpp_dali.bench.dali_window` or :mod:`etpp_dali.bench.torch_window`), which runs
:func:`main` with its builder; the benchmark starts that module. Started as this module, the
window becomes that one in place (``exec``: the same process), so a window never holds the
other family's libraries.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch

from etpp_dali.bench.loaders import Running, WindowSpec, window_module
from etpp_dali.bench.processes import RUN_MARKER, ProcStat, descendants, error_line, marked_processes
from etpp_dali.bench.record import peak_rss_mb
from etpp_dali.data.scan import ImageRecord
from etpp_dali.data.sources import Source
from etpp_dali.util.files import write_text_atomic

# RUN_MARKER and error_line live in processes (the parent reads them without torch); importable here too
__all__ = ["RUN_MARKER", "Builder", "become_window_module", "cuda_sync", "error_line", "exit_window", "load_sample",
           "main", "run_window"]

Builder = Callable[[WindowSpec, Source], Running]  # a window module's: the spec's loader over the sample


def load_sample(path: str | Path) -> Source:
    """The :class:`~etpp_dali.data.sources.Source` of a sample list
    (:func:`~etpp_dali.bench.loaders.write_sample`)."""
    doc = json.loads(Path(path).read_text())
    return Source(doc["name"], doc["classes"], [ImageRecord(*r) for r in doc["records"]])


def cuda_sync(spec: WindowSpec) -> Callable[[], None] | None:
    """What the window waits on before reading the clock: the GPU's queued work, on ``cuda``."""
    return torch.cuda.synchronize if spec.device == "cuda" else None


def _workers() -> dict[int, ProcStat]:
    return {st.pid: st for st in descendants(os.getpid())}


def _strangers() -> list[int]:
    """Processes of this benchmark run outside this window's process and its workers."""
    run = os.environ.get(RUN_MARKER)
    if not run:
        return []
    mine = {os.getpid()} | set(_workers())
    return [pid for pid in marked_processes(RUN_MARKER, run) if pid not in mine]


def _timed(loader: Running, spec: WindowSpec) -> dict[str, Any]:
    """Warm up, then time until both minimums are met."""
    t = time.perf_counter()
    warmup = loader.prefetch + spec.warmup
    for _ in range(warmup):
        loader.next_batch()
    if loader.sync:
        loader.sync()
    warmup_s = time.perf_counter() - t
    strangers_start = _strangers()
    before = _workers()
    cpu0 = time.process_time()
    wall0, t0 = time.time(), time.perf_counter()
    images = batches = 0
    while batches < spec.min_batches or time.perf_counter() - t0 < spec.min_seconds:
        images += loader.next_batch()
        batches += 1
    if loader.sync:
        loader.sync()
    seconds = time.perf_counter() - t0
    wall1, cpu1 = time.time(), time.process_time()
    after = _workers()
    both = [pid for pid in before if pid in after and before[pid].start == after[pid].start]
    return {
        "images": images, "batches": batches, "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 2), "window_start": wall0, "window_end": wall1,
        "warmup_batches": warmup, "warmup_s": round(warmup_s, 3),
        "cpu_s_process": round(cpu1 - cpu0, 3),
        "cpu_s_workers": round(sum(after[p].cpu_s - before[p].cpu_s for p in both), 3),
        "workers_alive_start": len(before), "workers_alive_end": len(after),
        "workers": [{"pid": st.pid, "start": st.start} for st in {**before, **after}.values()],
        "workers_rss_mb": round(sum(st.rss_mb for st in after.values()), 1),
        "other_run_processes": sorted(set(strangers_start) | set(_strangers())),
    }


def _wait_workers_gone(timeout: float = 15.0) -> int:
    """Wait for this process's workers to exit after the loader closed; kill (by pid) any left.
    Returns how many had to be killed."""
    deadline = time.monotonic() + timeout
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _workers()
    for pid in left:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return len(left)


def run_window(spec: WindowSpec, build: Builder) -> dict[str, Any]:
    """Build (with ``build``), warm up, time and close one loader in this process; the window's record."""
    torch.set_num_threads(spec.threads)
    t = time.perf_counter()
    loader = build(spec, load_sample(spec.sample))
    build_s = time.perf_counter() - t
    try:
        record = _timed(loader, spec)
        record["threads_in_process"] = _thread_count()
    finally:
        loader.close()
    record.update(build_s=round(build_s, 3), decoder=loader.decoder, output_device=loader.output_device,
                  peak_rss_mb=round(peak_rss_mb(), 1), workers_killed_at_close=_wait_workers_gone())
    return record


def _thread_count() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def main(build: Builder, argv: list[str] | None = None) -> int:
    """A window module's entry: ``SPEC.json RESULT.json`` from ``argv`` (default: the command
    line); writes the result and returns the exit status."""
    spec_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = WindowSpec(**json.loads(Path(spec_path).read_text()))
    head = {**spec.as_record(), "pid": os.getpid()}
    try:
        record = {**head, **run_window(spec, build), "error": None}
        status = 0
    except BaseException as exc:  # reported by name in the results; the other loaders go on
        traceback.print_exc()
        detail = f"{type(exc).__name__}: {exc}".strip()
        record = {**head, "error": error_line(detail), "error_detail": detail[:4000]}
        status = 1
    write_text_atomic(result_path, json.dumps(record))
    return status


def exit_window(status: int) -> NoReturn:
    """End the window's process: the loader is closed and its workers are gone, so the slow
    interpreter teardown is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def become_window_module(argv: list[str]) -> NoReturn:
    """This process, started as ``etpp_dali.bench.window SPEC RESULT``, as the window module of
    the spec's loader (``exec``: same process, same pid)."""
    loader = json.loads(Path(argv[0]).read_text())["loader"]
    os.execv(sys.executable, [sys.executable, "-m", window_module(loader), *argv])


if __name__ == "__main__":
    become_window_module(sys.argv[1:])
