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
3. each is scored at the end of stage ``t = min(k + score_after, S - 1)``, the reference too,
   so both have spent the same compute (every stage owns an equal share); ``score_after=None``
   scores at the end of the budget (``t = S - 1``);
4. the first candidate whose proxy top-1 is at least the reference's minus the tolerance is
   chosen for stage k; when none is, stage k and every later one get R.

What it costs. A candidate of stage k shares stages 0..k-1 with the reference, and the run
accepted at stage k - 1 is the reference of stage k. A proxy that keeps the state of the accepted
path at each stage end (:class:`etpp_dali.search.proxy.TrainerProxy`) trains a candidate from
the end of stage k - 1, ``t - k + 1`` stages, and the reference only the stages from where the
accepted path was last scored to ``t``. So the accepted path is trained once, and each
candidate ``score_after + 1`` stages: with ``score_after = 1`` a search whose first candidate
passes at every stage trains about ``3 S`` stages, three runs' worth, against ``S + 1`` whole
runs from scratch. Each trial records the stages it trained (:attr:`Trial.cost`, in the
budget's unit, at the whole data set: the proxy spends its fraction of it per seed).

This module is the pure logic: it takes a ``proxy(schedule) -> top1`` callable (the top-1 at the
end of the schedule), or, with ``score_after``, ``proxy(schedule, stage) -> top1`` (the top-1 at
the end of ``stage``). :mod:`etpp_dali.search.proxy` is the trainer-backed proxy (a
class-balanced subset of the training set, cached runs); :func:`etpp_dali.search.run.run_search`
puts the two together for the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.search.budget import Budget
from etpp_dali.search.space import SearchError, SearchSpace, Trial

__all__ = ["Proxy", "SearchResult", "sequential_search"]

Proxy = Callable[..., float]  # proxy(schedule) or proxy(schedule, stage) -> top-1

_TOLERANCE_EPS = 1e-9  # a drop of exactly the tolerance passes despite float rounding


@dataclass
class SearchResult:
    """The chosen bands, their schedule and every trial on the way, in order."""

    bands: tuple[int, ...]
    schedule: Curriculum
    trials: list[Trial] = field(default_factory=list)
    top1: float | None = None  # proxy top-1 of the chosen schedule, at the end of stage `scored_at`
    scored_at: int | None = None

    @property
    def reference_top1(self) -> float | None:
        """Proxy top-1 of the all-full-resolution schedule (the first reference)."""
        return self.trials[0].top1 if self.trials else None

    @property
    def cost(self) -> float:
        """The stages the proxy trained, in the budget's unit at the whole data set, per seed."""
        return sum(t.cost or 0.0 for t in self.trials)


class _Search:
    """State of one sequential search: the scores so far (by the bands of the stages scored),
    the prefixes trained so far, and the trials."""

    def __init__(self, space: SearchSpace, budget: Budget, proxy: Proxy, score_after: int | None,
                 on_trial: Callable[[Trial], None] | None, on_choice: Callable[[Curriculum, int], None] | None) -> None:
        self.space, self.budget, self.proxy, self.score_after = space, budget, proxy, score_after
        self.on_trial = on_trial or (lambda trial: None)
        self.on_choice = on_choice or (lambda schedule, stage: None)
        self.scores: dict[tuple[int, ...], float] = {}
        self.trained: set[tuple[int, ...]] = set()
        self.trials: list[Trial] = []

    def scored_at(self, k: int) -> int:
        last = self.space.stages - 1
        return last if self.score_after is None else min(k + self.score_after, last)

    def score(self, trial: Trial, schedule: Curriculum, at: int) -> bool:
        """Set the trial's proxy top-1 at the end of stage ``at`` (running the proxy unless these
        stages were scored before) and what it trained; True when it was a new run."""
        node = trial.bands[:at + 1]
        new = node not in self.scores
        if new:
            last = at == self.space.stages - 1
            top1 = self.proxy(schedule) if last else self.proxy(schedule, at)  # type: ignore[call-arg]
            self.scores[node] = float(top1)
            first = next((j for j in range(at, -1, -1) if trial.bands[:j] in self.trained or j == 0), 0)
            self.trained.update(trial.bands[:j + 1] for j in range(first, at + 1))
            trial.cost = sum(s.epochs * self.budget.epoch_cost(s.band, schedule.resolution)
                             for s in schedule.stages[first:at + 1])
        trial.top1, trial.scored_at = self.scores[node], at
        trial.compute = schedule.total_compute
        return new

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        self.on_trial(trial)

    def stage(self, k: int, chosen: list[int]) -> tuple[int, Trial]:
        """The band of stage ``k`` given the bands chosen before it, and the trial that decided it."""
        R, S, at = self.space.resolution, self.space.stages, self.scored_at(k)
        reference = Trial(k, R, "reference", tuple(chosen) + (R,) * (S - k), "run")
        ref_schedule = self.budget.build(reference.bands, self.space)
        if ref_schedule is None:
            raise SearchError(self.budget.shortfall(self.space))
        if self.score(reference, ref_schedule, at):
            self.record(reference)
        for band in self.space.candidates_from(chosen[-1] if chosen else None):
            trial = Trial(k, band, "candidate", tuple(chosen) + (band,) + (R,) * (S - k - 1), "run",
                          reference_top1=reference.top1)
            schedule = self.budget.build(trial.bands, self.space)
            if schedule is None:
                trial.status = "unaffordable"
                self.record(trial)
                continue
            new = self.score(trial, schedule, at)
            trial.accepted = trial.top1 >= reference.top1 - self.space.tolerance - _TOLERANCE_EPS
            if new:
                self.record(trial)
            if trial.accepted:
                return band, trial
        return R, reference

    def run(self) -> SearchResult:
        chosen: list[int] = []
        S = self.space.stages
        for k in range(S):
            band, decided = self.stage(k, chosen)
            chosen.append(band)
            path = self.budget.build(chosen + [self.space.resolution] * (S - k - 1), self.space)
            assert path is not None, "an accepted schedule is affordable"
            self.on_choice(path, k)
            if band == self.space.resolution:  # every later stage is at R too: nothing left to try
                chosen += [band] * (S - k - 1)
                break
        schedule = self.budget.build(chosen, self.space)
        assert schedule is not None, "an accepted schedule is affordable"
        return SearchResult(tuple(chosen), schedule, self.trials, decided.top1, decided.scored_at)


def sequential_search(space: SearchSpace, budget: Budget, proxy: Proxy, *, score_after: int | None = None,
                      on_trial: Callable[[Trial], None] | None = None,
                      on_choice: Callable[[Curriculum, int], None] | None = None) -> SearchResult:
    """Choose each stage's band in turn (see the module docstring). ``proxy(schedule)`` returns
    the proxy top-1 of a schedule at its end and, with ``score_after``, ``proxy(schedule, stage)``
    at the end of ``stage``; ``on_trial`` hears of each trial as it ends, ``on_choice(path, k)``
    of the accepted path (the bands chosen so far, then R) once stage ``k`` is decided."""
    if score_after is not None and score_after < 0:
        raise SearchError(f"score_after {score_after} must be >= 0 (stages after a candidate's own)")
    return _Search(space, budget, proxy, score_after, on_trial, on_choice).run()
