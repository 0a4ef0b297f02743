"""The proxy training behind ``etpp search``: the trainer of ``etpp train``, on a seeded,
class-balanced subset of the training set, scored on a fixed, class-balanced validation subset.

- The subset: in every class ``round(fraction x n_c)`` of its training images (at least one),
  drawn with the seed (:func:`etpp_dali.data.splits.balanced_subset`). It is laid out under the
  search's output folder as an ImageFolder of links to the original files: ``train/`` and
  ``val/`` (the data set's own val split, or, with ``--val-split``, the very images ``etpp train
  --val-split`` holds out with the same seed, which the subset never draws from). A validation
  split of more than ``val_images`` images is cut to a class-balanced draw of that many; the
  search decodes it once and every proxy evaluation reuses the batches.
- A proxy run trains the candidate schedule unchanged, with its data epochs, on the subset:
  each stage costs ``fraction`` of what it costs in the schedule's full run. A schedule's proxy
  top-1 is the mean of ``--proxy-seeds`` runs (seeds ``seed``, ``seed + 1``, ...); every
  schedule of one search uses the same seeds, so candidates differ only by their schedule; for
  the same reason a recipe's ``echo: auto`` (whose factor follows timings) trains without echo.
- Prefix reuse and the cache: a run is a *node*, a schedule's first stages and a seed, kept in
  ``runs/<key>/``, ``key`` being a hash of everything that determines those stages (their bands,
  magnitudes, data epochs and batches, the LR span, every training setting that changes the
  result, the subset's files). ``result.json`` there holds the proxy top-1 at the end of its last
  stage; a search run again with the same settings reads it instead of training. ``state.pt``
  holds the full training state there, kept while the search may continue from it: a run
  trains only the stages after the longest prefix of its schedule whose state is kept
  (:mod:`etpp_dali.search.segments`). A run killed part-way resumes from its checkpoint at its
  last stage end; a finished search keeps no checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import open_source
from etpp_dali.data.splits import balanced_subset, holdout_indices
from etpp_dali.search.segments import link_state, train_segment
from etpp_dali.search.space import SearchError
from etpp_dali.train.config import TrainConfig
from etpp_dali.util.files import atomic_path, write_text_atomic

__all__ = ["ProxyData", "SearchInterrupted", "TrainerProxy", "check_seeds", "describe_subset", "plan_proxy_data",
           "training_settings"]

CACHE_VERSION = 3  # 2: echo auto trains without echo; 3: nodes of schedule prefixes
# TrainConfig fields the proxy sets itself, or that do not change what a run learns
_NOT_KEYED = {"name", "output", "progress", "tensorboard", "threads", "data", "val_split", "preset", "family",
              "budget", "resolution", "replay", "baseline", "baseline_budget", "val_every"}


def training_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that change what a proxy run learns."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_KEYED}


class SearchInterrupted(RuntimeError):
    """A proxy run was stopped by Ctrl-C or SIGTERM; its checkpoint is kept for the resume."""


@dataclass(frozen=True)
class ProxyData:
    """The proxy's data: which files, and where their ImageFolder of links goes."""

    root: Path                              # the ImageFolder of links (train/, val/)
    classes: list[str]
    train: list[tuple[str, int]]            # (path, label) of the subset
    val: list[tuple[str, int]]
    train_images: int                       # training images of a full run (after any hold-out)
    fingerprint: str

    def materialise(self) -> Path:
        """Write the ImageFolder of links (once; atomically) and return its root."""
        if (self.root / "train").is_dir():
            return self.root
        with atomic_path(self.root) as tmp:
            for split, files in (("train", self.train), ("val", self.val)):
                for i, (path, label) in enumerate(files):
                    folder = tmp / split / self.classes[label]
                    folder.mkdir(parents=True, exist_ok=True)
                    _link(Path(path).resolve(), folder / f"{i:07d}_{Path(path).name}")
        return self.root


def _link(target: Path, link: Path) -> None:
    try:
        os.symlink(target, link)
    except OSError:  # a file system without symbolic links: copy
        shutil.copy2(target, link)


def plan_proxy_data(data: str | Path, out: str | Path, *, fraction: float, seed: int,
                    val_split: float | None, val_images: int | None = None) -> ProxyData:
    """Choose the proxy's files (nothing is written until :meth:`ProxyData.materialise`); at most
    about ``val_images`` validation images (a class-balanced draw; None: all)."""
    if not 0.0 < fraction <= 1.0:
        raise SearchError(f"--proxy-fraction {fraction} is outside (0, 1]; give the share of the training set")
    root = Path(data)
    if not root.exists():
        raise SearchError(f"--data {data}: no such path; give an ImageFolder root with train/ and val/")
    has_val = root.is_dir() and (root / "val").is_dir()
    if not has_val and not val_split:
        raise SearchError(f"--data {data}: has no val/ split; add one or pass --val-split 0.1")
    try:
        train = open_source(root, "train")
        val = open_source(root, "val", classes=train.classes) if has_val else None
    except DataError as exc:
        raise SearchError(str(exc)) from None
    if train.members is not None:
        raise SearchError(f"--data {data}: the proxy subset is laid out as links to image files, which WebDataset "
                          "shards are not; give an ImageFolder or a file list")
    labels = train.labels
    if val is None:  # the hold-out of `etpp train --val-split`, image for image
        pool, held = holdout_indices(labels, val_split, seed)
        val_files = [(train.records[i].path, int(labels[i])) for i in held]
    else:
        pool = np.arange(len(train))
        val_files = [(r.path, r.label) for r in val.records]
    if val_images is not None and len(val_files) > val_images:
        val_labels = np.array([label for _, label in val_files])
        kept = balanced_subset(val_labels, np.arange(len(val_files)), val_images / len(val_files), seed)
        val_files = [val_files[i] for i in kept]
    subset = balanced_subset(labels, pool, fraction, seed)
    train_files = [(train.records[i].path, int(labels[i])) for i in subset]
    blob = json.dumps({"classes": train.classes, "train": train_files, "val": val_files}).encode()
    fingerprint = hashlib.sha256(blob).hexdigest()
    return ProxyData(Path(out) / f"data-{fingerprint[:12]}", list(train.classes), train_files, val_files,
                     len(pool), fingerprint)


def check_seeds(seeds: Any) -> None:
    """``--proxy-seeds``: a whole number of runs, at least one."""
    if not isinstance(seeds, int) or seeds < 1:
        raise SearchError(f"--proxy-seeds {seeds!r} must be an integer >= 1 (proxy runs averaged per schedule)")


class TrainerProxy:
    """``proxy(schedule, stage=None) -> top1``: the mean over ``seeds`` runs (seeds ``base.seed``,
    ``base.seed + 1``, ...) of the proxy top-1 of ``schedule`` at the end of ``stage`` (default:
    its last), with the settings of ``base`` on ``data``. Each (prefix, seed) is a cached node
    under ``runs``: ``result.json`` once scored, ``state.pt`` (the full state at the end of its
    last stage) while kept; a run trains only the stages after the longest prefix whose state is
    kept (:mod:`etpp_dali.search.segments`). More seeds cost more runs and shrink the run-to-run
    noise that a tolerance of half a point is otherwise smaller than."""

    def __init__(self, base: TrainConfig, data: ProxyData, runs: str | Path, *, seeds: int = 1,
                 on_start: Callable[[Curriculum, bool], None] | None = None) -> None:
        check_seeds(seeds)
        self.base = base
        self.data = data
        self.runs = Path(runs)
        self.seeds = seeds
        self.on_start = on_start or (lambda schedule, resumed: None)
        self.last_seconds = 0.0
        self.val_batches: list[Any] = []  # decoded once, by the first run's validation

    def _seeded(self, i: int) -> TrainConfig:
        return dataclasses.replace(self.base, seed=self.base.seed + i)

    def key(self, schedule: Curriculum, seed_index: int = 0, stage: int | None = None) -> str:
        """The node of ``schedule``'s stages 0..``stage`` (default: all) with seed ``base.seed +
        seed_index``: what those stages train depends on them, the LR span and the settings alone."""
        last = len(schedule.stages) - 1 if stage is None else stage
        prefix = [[s.band, s.magnitude, s.epochs, s.batch, s.replay, s.buffer] for s in schedule.stages[:last + 1]]
        blob = json.dumps({"version": CACHE_VERSION, "stages": prefix, "resolution": schedule.resolution,
                           "alpha": schedule.alpha, "lr_compute": schedule.lr_compute,
                           "train": training_settings(self._seeded(seed_index)), "data": self.data.fingerprint},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cached(self, schedule: Curriculum, seed_index: int = 0, stage: int | None = None) -> dict[str, Any] | None:
        """The recorded result of ``schedule`` at the end of ``stage`` with seed ``base.seed +
        seed_index``, if it was scored before."""
        try:
            return json.loads((self.runs / self.key(schedule, seed_index, stage) / "result.json").read_text())
        except (OSError, ValueError):
            return None

    def cached_runs(self) -> int:
        return sum(1 for _ in self.runs.glob("*/result.json")) if self.runs.is_dir() else 0

    def __call__(self, schedule: Curriculum, stage: int | None = None) -> float:
        t0 = time.perf_counter()
        last = len(schedule.stages) - 1 if stage is None else stage
        scores = [float((self.cached(schedule, i, last) or self._run(schedule, i, last))["top1"])
                  for i in range(self.seeds)]
        self.last_seconds = time.perf_counter() - t0
        return sum(scores) / len(scores)

    def _state(self, schedule: Curriculum, seed_index: int, stage: int) -> Path:
        return self.runs / self.key(schedule, seed_index, stage) / "state.pt"

    def _run(self, schedule: Curriculum, seed_index: int, stage: int) -> dict[str, Any]:
        folder = self.runs / self.key(schedule, seed_index, stage)
        first = next((k + 1 for k in range(stage - 1, -1, -1) if self._state(schedule, seed_index, k).is_file()), 0)
        resumed = (folder / "last.pt").is_file()
        self.on_start(schedule, resumed)
        cfg = self._config(self._seeded(seed_index), schedule, folder)

        def keep(k: int, last_pt: Path) -> None:
            if k >= first:
                link_state(last_pt, self._state(schedule, seed_index, k))

        start = self._state(schedule, seed_index, first - 1) if first else None
        summary = train_segment(cfg, start=start, stop_stage=stage, on_stage_end=keep, val_batches=self.val_batches)
        return self._finish(folder, summary)

    def keep_states(self, schedule: Curriculum | None = None, stages: range = range(0)) -> None:
        """Delete every kept state but those of ``schedule``'s stages in ``stages`` (the accepted
        path's, which later candidates continue from), for every seed."""
        keep = {self._state(schedule, i, k) for i in range(self.seeds) for k in stages} if schedule else set()
        for state in self.runs.glob("*/state.pt"):
            if state not in keep:
                state.unlink(missing_ok=True)

    def _config(self, base: TrainConfig, schedule: Curriculum, folder: Path) -> TrainConfig:
        folder.mkdir(parents=True, exist_ok=True)
        schedule_file = folder / "schedule.json"
        write_text_atomic(schedule_file, json.dumps(schedule.to_dict(), indent=2) + "\n")
        # echo auto picks its factor from timings, which the machine's load moves: a proxy run
        # must depend on its schedule and seed alone, so auto trains without echo here
        echo = "off" if base.echo == "auto" else base.echo
        return dataclasses.replace(
            base, echo=echo, name=f"proxy-{folder.name}", data=str(self.data.materialise()), val_split=None,
            preset=str(schedule_file), budget=None, resolution=schedule.resolution, replay=False, baseline=False,
            baseline_budget=None, output=str(folder), val_every=10**9, progress=False, tensorboard=False)

    def _finish(self, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("interrupted"):
            raise SearchInterrupted(f"a proxy run was interrupted; its checkpoint is in {folder}: run the same "
                                    "command again to resume the search")
        if summary.get("top1") is None:
            raise SearchError(f"the proxy run in {folder} ended without a validation score")
        result = {"top1": summary["top1"], "top5": summary.get("top5"), "wall_s": summary.get("wall_s"),
                  "epochs": summary.get("epochs_done"), "schedule": summary.get("schedule")}
        write_text_atomic(folder / "result.json", json.dumps(result, indent=2) + "\n")
        for checkpoint in folder.glob("*.pt"):  # the result is recorded; the state is kept as state.pt
            if checkpoint.name != "state.pt":
                checkpoint.unlink(missing_ok=True)
        return result


def describe_subset(data: ProxyData, fraction: float) -> str:
    return (f"proxy data: {len(data.train)} of {data.train_images} training images ({fraction:g}, "
            f"class-balanced), {len(data.val)} validation images, {len(data.classes)} classes")
