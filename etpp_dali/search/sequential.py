"""The computational-constrained sequential search for the bands of an EfficientTrain++ schedule.

EfficientTrain and EfficientTrain++ designed their schedules with a search ("greedy",
"computational-constrained sequential") whose procedure they do not publish. What follows is
this project's own design; the schedules it builds and what they may spend are in
:mod:`etpp_dali.search.budget`.

Stage by stage, from the first:

1. the *reference* of stage k: the bands chosen so far, then the full resolution R for stage k
   and every later stage;
2. the *candidates*: the bands below R, smallest first, never below the band chosen for stage
   k - 1 (a curriculum only adds frequencies, and this bounds the cost), each with the chosen
   bands before it and R after it;
3. the first candidate whose proxy top-1 is at least the reference's minus the tolerance is
   chosen for stage k; when none is, stage k and every later one get R.

The run accepted at stage k is the reference of stage k + 1, so each stage costs only its
candidates: at most ``S + n`` proxy runs for ``n`` candidates below R. This module is the pure
logic: it takes a ``proxy(schedule) -> top1`` callable. :mod:`etpp_dali.search.proxy` is the
trainer-backed proxy (a class-balanced subset of the training set, cached runs);
:func:`etpp_dali.search.run.run_search` puts the two together for the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.search.budget import Budget
from etpp_dali.search.space import SearchError, SearchSpace, Trial

__all__ = ["Proxy", "SearchResult", "sequential_search"]

Proxy = Callable[[Curriculum], float]

_TOLERANCE_EPS = 1e-9  # a drop of exactly the tolerance passes despite float rounding


@dataclass
class SearchResult:
    """The chosen bands, their schedule and every trial on the way, in order."""

    bands: tuple[int, ...]
    schedule: Curriculum
    trials: list[Trial] = field(default_factory=list)
    top1: float | None = None  # proxy top-1 of the chosen schedule

    @property
    def reference_top1(self) -> float | None:
        """Proxy top-1 of the all-full-resolution schedule (the first reference)."""
        return self.trials[0].top1 if self.trials else None


class _Search:
    """State of one sequential search: the runs made so far (by bands) and the trials."""

    def __init__(self, space: SearchSpace, budget: Budget, proxy: Proxy,
                 on_trial: Callable[[Trial], None] | None) -> None:
        self.space, self.budget, self.proxy = space, budget, proxy
        self.on_trial = on_trial or (lambda trial: None)
        self.scores: dict[tuple[int, ...], float] = {}
        self.trials: list[Trial] = []

    def score(self, trial: Trial, schedule: Curriculum) -> bool:
        """Set the trial's proxy top-1 (running the proxy unless these bands ran before); True
        when it was a new run."""
        new = trial.bands not in self.scores
        if new:
            self.scores[trial.bands] = float(self.proxy(schedule))
        trial.top1 = self.scores[trial.bands]
        trial.compute, trial.cost = schedule.total_compute, self.budget.cost(schedule)
        return new

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        self.on_trial(trial)

    def stage(self, k: int, chosen: list[int]) -> int:
        """The band of stage ``k`` given the bands chosen before it."""
        R, S = self.space.resolution, self.space.stages
        reference = Trial(k, R, "reference", tuple(chosen) + (R,) * (S - k), "run")
        ref_schedule = self.budget.build(reference.bands, self.space)
        if ref_schedule is None:
            raise SearchError(self.budget.shortfall(self.space))
        if self.score(reference, ref_schedule):
            self.record(reference)
        for band in self.space.candidates_from(chosen[-1] if chosen else None):
            trial = Trial(k, band, "candidate", tuple(chosen) + (band,) + (R,) * (S - k - 1), "run",
                          reference_top1=reference.top1)
            schedule = self.budget.build(trial.bands, self.space)
            if schedule is None:
                trial.status = "unaffordable"
                self.record(trial)
                continue
            new = self.score(trial, schedule)
            trial.accepted = trial.top1 >= reference.top1 - self.space.tolerance - _TOLERANCE_EPS
            if new:
                self.record(trial)
            if trial.accepted:
                return band
        return R

    def run(self) -> SearchResult:
        chosen: list[int] = []
        for k in range(self.space.stages):
            band = self.stage(k, chosen)
            chosen.append(band)
            if band == self.space.resolution:  # every later stage is at R too: nothing left to try
                chosen += [band] * (self.space.stages - k - 1)
                break
        schedule = self.budget.build(chosen, self.space)
        assert schedule is not None, "an accepted schedule is affordable"
        return SearchResult(tuple(chosen), schedule, self.trials, self.scores[tuple(chosen)])


def sequential_search(space: SearchSpace, budget: Budget, proxy: Proxy, *,
                      on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Choose each stage's band in turn (see the module docstring); ``proxy(schedule)`` returns
    the proxy top-1 of a schedule, ``on_trial`` hears of each trial as it ends."""
    return _Search(space, budget, proxy, on_trial).run()
