"""What a searched schedule may spend, and the whole data epochs each stage gets.

``S`` stages; stage k has RandAugment magnitude ``m_k = 10 k / S`` (the presets' m = stage index
for S = 10) and owns an equal share of the budget:

- ``--budget E``: ``E / S`` full-resolution epochs of compute, as in the ET++ presets; one data
  epoch at band B costs ``c(B) = (B / R)**alpha`` of them (:class:`ComputeBudget`).
- ``--wall-clock-budget W``: ``W / S`` seconds; one data epoch at band B costs ``c(B) = t(B)``,
  its predicted seconds on this machine, from the same measurement as ``etpp schedule
  --measure`` (:class:`WallClockBudget`, measured by :mod:`etpp_dali.search.wallclock`).

Whole data epochs (:func:`allocate_epochs`): stage k runs the most epochs that keep the cost
of stages 0..k within their shares, ``(k + 1) W / S``::

    n_k = floor(((k + 1) W / S - sum_{j<k} n_j c(B_j)) / c(B_k))

so what rounding leaves over passes to the next stage, and no schedule ever spends more than
the budget. (The presets' integer arithmetic rounds each band's whole run on its own, which
can spend more than ``W / S`` on a stage whose band differs from its neighbours'.) All stages
at one band get the presets' whole run, spread within one epoch of theirs. The schedule is
written with its data epochs (``split: epochs``), so ``etpp train --preset FILE`` trains
exactly what was scored.

So every candidate schedule spends the budget less at most one data epoch of its last stage,
and candidates are compared at (nearly) equal cost. With ``--budget`` the learning rate of every
schedule spans E (``lr_compute: E`` in the file), so it is the same over two schedules' common
first stages; with ``--wall-clock-budget`` it spans each schedule's own compute. A schedule is
*affordable* when every stage gets at least one whole data epoch; a candidate the budget cannot
afford is never run.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.curriculum.schedule_file import BASELINE_BUDGET, StageSpec
from etpp_dali.search.space import SearchError, SearchSpace

__all__ = ["Budget", "ComputeBudget", "WallClockBudget", "allocate_epochs"]

_FLOOR_EPS = 1e-9  # guards floor() against a share that lands a hair below a whole epoch


def allocate_epochs(epoch_costs: Sequence[float], total: float) -> list[int]:
    """Whole data epochs per stage when each of the ``S`` stages owns ``total / S`` and one data
    epoch of stage k costs ``epoch_costs[k]``: stage k runs the most epochs that keep stages
    0..k within their shares (the module docstring), so the sum never exceeds ``total``."""
    stages, spent, epochs = len(epoch_costs), 0.0, []
    for k, cost in enumerate(epoch_costs):
        n = max(0, math.floor((total * (k + 1) / stages - spent) / cost + _FLOOR_EPS))
        epochs.append(n)
        spent += n * cost
    return epochs


class _StageBudget:
    """What both budgets share: each of the ``S`` stages owns ``total / S``; one data epoch at
    band B costs :meth:`epoch_cost`; a schedule runs the whole epochs of :func:`allocate_epochs`
    and is written with them (``split: epochs``, the shares being the epochs over their sum)."""

    flag: str
    unit: str
    name: str

    def __init__(self, total: float, *, alpha: float, baseline_budget: float) -> None:
        self.total = float(total)
        self.alpha = alpha
        self.baseline_budget = baseline_budget

    def epoch_cost(self, band: int, resolution: int) -> float:
        raise NotImplementedError

    def epochs(self, bands: Sequence[int], space: SearchSpace) -> list[int]:
        return allocate_epochs([self.epoch_cost(int(b), space.resolution) for b in bands], self.total)

    def build(self, bands: Sequence[int], space: SearchSpace) -> Curriculum | None:
        """The schedule of ``bands``, or None when some stage gets no whole data epoch."""
        epochs = self.epochs(bands, space)
        if min(epochs) < 1:
            return None
        total = sum(epochs)
        specs = [StageSpec(int(b), m, n / total) for b, m, n in zip(bands, space.magnitudes(), epochs)]
        return Curriculum(specs, budget=total, resolution=space.resolution, split="epochs", alpha=self.alpha,
                          baseline_budget=self.baseline_budget, lr_compute=self.lr_compute, name=self.name)

    @property
    def lr_compute(self) -> float | None:
        """The compute the LR of every schedule spans (None: each schedule's own)."""
        return None

    def cost(self, schedule: Curriculum) -> float:
        """What ``schedule`` spends, in the budget's unit."""
        return sum(s.epochs * self.epoch_cost(s.band, schedule.resolution) for s in schedule.stages)


class ComputeBudget(_StageBudget):
    """Each stage owns ``1/S`` of ``epochs`` full-resolution epochs of compute (ET++'s split)."""

    flag = "--budget"
    unit = "full-resolution epochs"
    name = "etpp-search"

    def __init__(self, epochs: float, *, alpha: float = 2.0, baseline_budget: float = BASELINE_BUDGET) -> None:
        if not (epochs > 0 and math.isfinite(epochs)):
            raise SearchError(f"--budget {epochs} must be a number > 0 (full-resolution epochs of compute)")
        super().__init__(epochs, alpha=alpha, baseline_budget=baseline_budget)

    def epoch_cost(self, band: int, resolution: int) -> float:
        return (band / resolution) ** self.alpha

    @property
    def lr_compute(self) -> float:
        """E: every schedule's LR spans the budget, not its own compute (which falls short of E by
        less than one data epoch of its last stage), so the LR of a stage depends on the stages
        before it alone and a candidate may continue from the accepted path's checkpoint."""
        return self.total

    def describe(self, space: SearchSpace) -> str:
        return (f"budget: E = {self.total:g} full-resolution epochs of compute, {self.total / space.stages:.3g} a "
                f"stage (cost ~ (B/R)^{self.alpha:g})")

    def shortfall(self, space: SearchSpace) -> str:
        need = space.stages  # one data epoch a stage at R costs one full-resolution epoch
        return (f"--budget {self.total:g}: no candidate schedule fits: each of the {space.stages} stages owns "
                f"{self.total / space.stages:.2g} full-resolution epochs, less than one data epoch at "
                f"--resolution {space.resolution}; raise --budget to at least {need} or lower --stages")


class WallClockBudget(_StageBudget):
    """Each stage owns ``1/S`` of ``seconds``; ``seconds_per_epoch[B]`` is the predicted time of
    one data epoch at band B on this machine."""

    flag = "--wall-clock-budget"
    unit = "s"
    name = "search-wall-clock"

    def __init__(self, seconds: float, seconds_per_epoch: Mapping[int, float], *, alpha: float = 2.0,
                 baseline_budget: float = BASELINE_BUDGET) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise SearchError(f"--wall-clock-budget {seconds} must be a number of seconds > 0")
        super().__init__(seconds, alpha=alpha, baseline_budget=baseline_budget)
        self.seconds_per_epoch = {int(b): float(t) for b, t in seconds_per_epoch.items()}

    def epoch_cost(self, band: int, resolution: int) -> float:
        return self.seconds_per_epoch[band]

    def describe(self, space: SearchSpace) -> str:
        per_epoch = ", ".join(f"B = {b}: {t:.3g} s" for b, t in sorted(self.seconds_per_epoch.items()))
        return (f"budget: {self.total:g} s of wall-clock here, {self.total / space.stages:.3g} s a stage; "
                f"predicted seconds per data epoch: {per_epoch}")

    def shortfall(self, space: SearchSpace) -> str:
        need = space.stages * self.seconds_per_epoch[space.resolution]
        return (f"--wall-clock-budget {self.total:g}: no candidate schedule fits: each of the {space.stages} "
                f"stages owns {self.total / space.stages:.3g} s, less than one data epoch at --resolution "
                f"{space.resolution} ({self.seconds_per_epoch[space.resolution]:.3g} s here); raise it to at least "
                f"{math.ceil(need)} s or lower --stages")


Budget = ComputeBudget | WallClockBudget
