"""The loader benchmark: images/sec of each loader timed alone, in rounds of alternating order.

How the figures are made. The data set is scanned once and a sample of at most ``files`` good
files is drawn once (fixed seed), read once into the page cache, and written to a list that
every window reads (no scan inside a window; a 200-photo set and a 100,000-photo set cost the
same). The list is repeated to fill at least 64 batches per pass, so epoch ends, where a torch
``DataLoader`` drains and refills its queue, are as rare on a small set as on a large one.
Each (loader, band, round) then runs in a fresh process of its own, started only after the
previous one and every worker process it had are gone: while a loader is timed nothing else of
the benchmark runs. In its process the loader is built, warmed up (its prefetch depth plus a
few batches) and timed until both a minimum of batches and of seconds are reached. Rounds
alternate the order (A B C, then C B A). Per loader and band the median of the rounds is
reported, with the min-max range; ratios are ours against each peer, medians against medians.

The record keeps every window: its figure, wall-clock start and end, its process's lifetime
(spawn to the moment its whole process group was gone), its worker processes and the CPU
seconds it and its workers spent in the window. :func:`isolation_violations` checks from that
record that no window overlapped another loader's process or workers.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from etpp_dali.bench.loaders import (
    BREAKDOWN,
    DEFAULT_LOADERS,
    LOADERS,
    PEERS,
    WindowSpec,
    window_module,
    write_sample,
)
from etpp_dali.bench.processes import HAS_PROC, RUN_MARKER, error_line, group_members
from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import open_source

__all__ = ["LoaderBenchSettings", "BenchError", "bench_loader", "plan_rounds", "isolation_violations",
           "median_of", "summarise"]

_MIN_PASS_BATCHES = 64  # the sample list is repeated to at least this many batches per pass


class BenchError(ValueError):
    """A benchmark setting that cannot be used; the message names the flag."""


@dataclass
class LoaderBenchSettings:
    """Everything the loader benchmark is run with (recorded with the results)."""

    # what is timed
    loaders: list[str] = field(default_factory=lambda: list(DEFAULT_LOADERS))
    bands: list[int] = field(default_factory=lambda: [96, 160, 224])
    magnitude: float = 9.0
    batch: int = 64
    threads: int = 2
    resolution: int = 224
    device: str = "cpu"
    breakdown: bool = False
    # how much of it, and for how long
    files: int = 2000
    rounds: int = 2
    warmup: int = 3
    min_batches: int = 10
    min_seconds: float = 3.0
    time_limit: float | None = None  # start no window that would likely end after this many seconds
    window_timeout: float = 300.0
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`BenchError` naming the flag of the first bad setting."""
        for flag, value in (("--rounds", self.rounds), ("--min-batches", self.min_batches),
                            ("--batch-size", self.batch), ("--threads", self.threads), ("--files", self.files)):
            if value < 1:
                raise BenchError(f"{flag} {value}: must be >= 1")
        if self.time_limit is not None and self.time_limit <= 0:
            raise BenchError(f"--time-limit {self.time_limit:g}: must be > 0 seconds")
        if self.warmup < 0 or self.min_seconds < 0:
            raise BenchError(f"--warmup {self.warmup} / --min-seconds {self.min_seconds}: must be >= 0")
        if not self.bands or any(b < 1 for b in self.bands):
            raise BenchError(f"--bands {self.bands}: give positive bands, e.g. 96,160,224")
        too_big = [b for b in self.bands if b > self.resolution]
        if too_big:
            raise BenchError(f"--bands {','.join(map(str, too_big))}: every band must be "
                             f"<= --resolution {self.resolution}")
        if self.magnitude != int(self.magnitude) or not 0 <= self.magnitude <= 10:
            raise BenchError(f"--magnitude {self.magnitude:g}: give a whole number 0..10 "
                             "(timm's rand-m<m> takes integers)")
        unknown = [name for name in self.loaders if name not in LOADERS]
        if unknown or not self.loaders:
            raise BenchError(f"--loaders {','.join(unknown) or '(none)'}: unknown; "
                             f"use some of {', '.join(DEFAULT_LOADERS)}")
        if self.device not in ("cpu", "cuda"):
            raise BenchError(f"--device {self.device}: use cpu or cuda")

    def slots(self) -> list[tuple[str, int | None]]:
        """(loader, band) pairs of one round; band None for a loader that does not depend on it."""
        names = list(dict.fromkeys(self.loaders + (list(BREAKDOWN) if self.breakdown else [])))
        out: list[tuple[str, int | None]] = [(n, None) for n in names if not LOADERS[n].per_band]
        out += [(n, b) for b in self.bands for n in names if LOADERS[n].per_band]
        return out


def plan_rounds(settings: LoaderBenchSettings) -> list[list[tuple[str, int | None]]]:
    """The windows of each round: the slots in order, then reversed, alternately."""
    slots = settings.slots()
    return [slots if r % 2 == 0 else slots[::-1] for r in range(settings.rounds)]


# ----------------------------------------------------------------------------- the sample
def _open_files(data: str | Path) -> Any:
    try:
        source = open_source(data, "train")
    except DataError as exc:
        raise BenchError(f"--data: {exc}") from None
    if source.members is not None:
        raise BenchError(f"--data {data}: WebDataset shards are not image files the peers can read; "
                         "give an ImageFolder or a .txt file list")
    return source


def sample_indices(count: int, files: int, batch: int, seed: int) -> np.ndarray:
    """At most ``files`` distinct images, drawn once, repeated to at least 64 batches."""
    rng = np.random.default_rng([seed, 0xBE4C])
    pick = rng.permutation(count)[:files] if count > files else np.arange(count)
    reps = -(-_MIN_PASS_BATCHES * batch // len(pick))
    return np.tile(pick, max(1, reps))


def _read_once(source: Any, indices: np.ndarray) -> None:
    """Bring the sample into the page cache before any window (figures are decode-bound)."""
    for i in np.unique(indices):
        with open(source.records[int(i)].path, "rb") as f:
            while f.read(1 << 20):
                pass


# ------------------------------------------------------------------------ one window
def _wait_group_gone(pgid: int, timeout: float = 30.0) -> float:
    """Wait until no process of group ``pgid`` is left (kill what lingers); the time it was."""
    deadline = time.monotonic() + timeout
    killed = False
    while group_members(pgid):
        if time.monotonic() > deadline and not killed:
            _kill_group(pgid)
            killed, deadline = True, time.monotonic() + 10.0
        elif time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return time.time()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _error_from_log(log: Path, returncode: int | None) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return f"exited with status {returncode}: {error_line(text) if text.strip() else 'no output'}"


def run_one(spec: WindowSpec, workdir: Path, run_id: str, timeout: float) -> dict[str, Any]:
    """Run one window in a new process (its own process group) and wait until that group is gone."""
    name = f"{spec.round}-{spec.loader}-{spec.band or 'all'}"
    spec_path, result_path, log = (workdir / f"{name}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(asdict(spec)))
    env = {**os.environ, RUN_MARKER: run_id}
    spawned = time.time()
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", window_module(spec.loader), str(spec_path), str(result_path)],
                                stdout=err, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            timed_out = True
        except BaseException:  # Ctrl-C: take the window's process group down with us
            _kill_group(proc.pid)
            raise
    exited = time.time()
    group_gone = _wait_group_gone(proc.pid)
    record = json.loads(result_path.read_text()) if result_path.is_file() else {**spec.as_record(), "pid": proc.pid}
    if timed_out:
        record["error"] = f"timed out after {timeout:g} s"
    elif not result_path.is_file():  # it died before writing a result (a crash in DALI, a kill)
        record["error"] = _error_from_log(log, proc.returncode)
    record.update(process={"pid": proc.pid, "spawned": spawned, "exited": exited, "group_gone": group_gone,
                           "returncode": proc.returncode})
    return record


# --------------------------------------------------------------------------- the run
def bench_loader(data: str | Path, settings: LoaderBenchSettings,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every loader of ``settings`` alone on ``data``; the full record (see the module)."""
    settings.validate()
    log = log or (lambda _: None)
    t_start = time.time()
    source = _open_files(data)
    indices = sample_indices(len(source), settings.files, settings.batch, settings.seed)
    _read_once(source, indices)
    rounds = plan_rounds(settings)
    log(f"{len(source)} images ({len(source.bad)} left out), sample of {len(np.unique(indices))}; "
        f"{sum(map(len, rounds))} windows, each in its own process")
    windows: list[dict[str, Any]] = []
    run_id = uuid.uuid4().hex
    failed: set[tuple[str, int | None]] = set()
    skipped = 0
    with tempfile.TemporaryDirectory(prefix="etpp-bench-") as tmp:
        sample = write_sample(Path(tmp) / "sample.json", source, indices)
        for r, slots in enumerate(rounds):
            for loader, band in slots:
                if (loader, band) in failed:  # it crashed in an earlier round: do not retry
                    continue
                if _out_of_time(settings, windows, t_start):
                    skipped += 1
                    continue
                spec = WindowSpec(loader=loader, band=band, round=r, sample=str(sample), batch=settings.batch,
                                  threads=settings.threads, magnitude=settings.magnitude,
                                  resolution=settings.resolution, device=settings.device, warmup=settings.warmup,
                                  min_batches=settings.min_batches, min_seconds=settings.min_seconds,
                                  seed=settings.seed + r)
                rec = run_one(spec, Path(tmp), run_id, settings.window_timeout)
                windows.append(rec)
                if rec["error"]:
                    failed.add((loader, band))
                log(_window_line(rec, r, len(rounds)))
    doc = {"data": str(data), "images": len(source), "bad_files": len(source.bad),
           "sample_files": int(len(np.unique(indices))), "sample_entries": int(len(indices)),
           "settings": asdict(settings), "windows": windows}
    doc.update(summarise(doc))
    doc["isolation"] = {"checked": HAS_PROC, "violations": isolation_violations(windows)}
    doc["duration_s"] = round(time.time() - t_start, 1)
    if skipped:
        doc["skipped_windows"] = skipped
        log(f"--time-limit {settings.time_limit:g} s: {skipped} window(s) not run")
    return doc


def _out_of_time(settings: LoaderBenchSettings, windows: Sequence[dict[str, Any]], t_start: float) -> bool:
    """Whether the next window would likely end past ``settings.time_limit`` (a typical window
    lasts as long as the median one so far)."""
    if settings.time_limit is None:
        return False
    spans = [w["process"]["group_gone"] - w["process"]["spawned"] for w in windows]
    typical = statistics.median(spans) if spans else 0.0
    return time.time() - t_start + typical > settings.time_limit


def _window_line(rec: dict[str, Any], r: int, rounds: int) -> str:
    where = f"round {r + 1}/{rounds} {rec['loader']}" + (f" B={rec['band']}" if rec.get("band") else "")
    if rec["error"]:
        return f"{where}: FAILED: {rec['error']}"
    return (f"{where}: {rec['images_per_s']:.0f} img/s ({rec['batches']} batches in {rec['seconds']:.1f} s, "
            f"{(rec['cpu_s_process'] + rec['cpu_s_workers']) / rec['seconds']:.1f} cores busy)")


# ----------------------------------------------------------------------- the summary
def _key(band: int | None) -> str:
    return "all" if band is None else str(band)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "rounds": [round(v, 1) for v in values]}


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    """Per loader and band the median, min and max over rounds (and cores busy); ours against
    each peer per band; the per-stage breakdown; the errors."""
    ok = [w for w in doc["windows"] if not w["error"]]
    results: dict[str, dict[str, Any]] = {}
    for w in ok:
        results.setdefault(w["loader"], {}).setdefault(_key(w["band"]), []).append(w)
    for per_band in results.values():
        for key, ws in per_band.items():
            busy = statistics.median((w["cpu_s_process"] + w["cpu_s_workers"]) / w["seconds"] for w in ws)
            per_band[key] = {**_stats([w["images_per_s"] for w in ws]), "cores_busy": round(busy, 2)}
    bands = doc["settings"]["bands"]
    return {"results": results, "ratios": _ratios(results, bands), "breakdown": _breakdown(results, bands),
            "errors": [{"loader": w["loader"], "band": w["band"], "round": w["round"], "error": w["error"]}
                       for w in doc["windows"] if w["error"]]}


def median_of(results: dict[str, Any], loader: str, band: int) -> float | None:
    """The loader's median at ``band`` (its band-independent figure if it has no band)."""
    per_band = results.get(loader, {})
    entry = per_band.get(str(band)) or per_band.get("all")
    return entry["median"] if entry else None


def _ratios(results: dict[str, Any], bands: Sequence[int]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for band in bands:
        ours = median_of(results, "ours", band)
        row = {}
        for peer in PEERS:
            theirs = median_of(results, peer, band)
            if ours and theirs:
                row[peer] = round(ours / theirs, 3)
        out[str(band)] = row
    return out


def _breakdown(results: dict[str, Any], bands: Sequence[int]) -> list[dict[str, Any]]:
    """Per band, each stage of our graph: images/sec, ms per image, and ms the stage adds."""
    if "stage_decode" not in results:
        return []
    rows = []
    for band in bands:
        previous = 0.0
        for stage in BREAKDOWN:
            rate = median_of(results, stage, band)
            if not rate:
                continue
            ms = 1000.0 / rate
            rows.append({"band": band, "stage": stage, "label": LOADERS[stage].label, "images_per_s": rate,
                         "ms_per_image": round(ms, 3), "ms_added": round(ms - previous, 3)})
            previous = ms
    return rows


def isolation_violations(windows: Sequence[dict[str, Any]]) -> list[str]:
    """Every way a timed window was not alone: another window's process (or its workers: the
    same process group) alive between its start and end, or another process of the run seen in
    it; an empty list when each loader was timed alone."""
    out = []
    for w in windows:
        if w["error"]:
            continue
        me = f"{w['loader']}@{_key(w['band'])} round {w['round']}"
        if w.get("other_run_processes"):
            out.append(f"{me}: other benchmark processes alive in its window: {w['other_run_processes']}")
        for other in windows:
            p = other["process"]
            if p["pid"] == w["process"]["pid"]:
                continue
            if p["spawned"] < w["window_end"] and p["group_gone"] > w["window_start"]:
                out.append(f"{me}: overlapped {other['loader']}@{_key(other['band'])} round {other['round']} "
                           f"(pid {p['pid']})")
    return out
