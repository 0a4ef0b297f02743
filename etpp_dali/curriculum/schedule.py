"""EfficientTrain and EfficientTrain++ curricula as plain data, and the arithmetic on them.

A curriculum is an ordered list of stages. In stage k every image is shown through a
``B_k x B_k`` low-frequency window (the band), with RandAugment at magnitude ``m_k`` (timm's
0..10 scale) and replay factor ``r_k`` (the loader decodes ``1/r_k`` of each batch fresh and
draws the rest from a buffer of recent, already augmented samples).

Budget arithmetic. ``R`` is the full resolution, ``alpha`` the model-cost exponent (a step at
band ``B`` costs ``(B/R)**alpha`` of a full-resolution step; 2 for convnets and for ViTs at a
fixed patch size, ignoring attention's extra quadratic term).

- ``split="compute"`` (EfficientTrain++): the budget ``E`` is counted in full-resolution
  epochs and stage k owns the share ``s_k`` of it (the presets: 10 equal shares), so it runs
  ``s_k E (R/B_k)**alpha / r_k`` data epochs. Rounding follows the reference code's integer
  arithmetic::

      P_k = floor(E (R/B_k)**alpha / r_k)             # a whole run at stage k's settings
      n_k = floor(P_k C_{k+1}) - floor(P_k C_k)        # C_k = s_0 + ... + s_{k-1}

  which gives 108, 109, 39, 39, 40, 39, 20, 20, 20, 20 = 454 data epochs for ResNet at E = 200.
- ``split="epochs"`` (EfficientTrain): ``E`` is the number of data epochs and stage k runs the
  share ``s_k`` of them (same rounding with ``P_k = floor(E / r_k)``).

The compute of stage k, in full-resolution epochs, is ``n_k r_k (B_k/R)**alpha``; relative
compute and speed-up are taken against a baseline budget (300 epochs by default, so the
EfficientTrain++ speed-up is 300/E). Learning-rate warm-up and cosine decay follow the fraction
of compute done (:meth:`Curriculum.compute_fraction`), not of data epochs, over the schedule's
own compute or, where it sets ``lr_compute``, over that much (the search's schedules span their
budget E, so schedules that share their first stages share those stages' learning rates).

The preset tables live in :mod:`etpp_dali.curriculum.presets`, the schedule file and the checks in
:mod:`etpp_dali.curriculum.schedule_file`, the rounding above and the per-stage table in
:mod:`etpp_dali.curriculum.stages`; this module keeps the schedule, its queries and its position
in a run. None of them imports torch or DALI: the loader and the trainer query them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from etpp_dali.curriculum.presets import FAMILIES, PRESETS, preset_schedule
from etpp_dali.curriculum.schedule_file import (
    BASELINE_BUDGET,
    REFERENCE_RESOLUTION,
    ScheduleError,
    StageSpec,
    check_schedule,
    parse_schedule,
    read_schedule_file,
    scale_band,
)
from etpp_dali.curriculum.stages import Stage, resolve_stages, stage_table, step_cost

__all__ = [
    "BASELINE_BUDGET",
    "FAMILIES",
    "KINDS",
    "PRESETS",
    "Curriculum",
    "ScheduleError",
    "SchedulePosition",
    "Stage",
    "StageSpec",
    "scale_band",
]

KINDS = PRESETS + ("file", "custom")  # where a schedule came from: a preset, a file, or code


@dataclass(frozen=True)
class SchedulePosition:
    """Where a run stands: the data epoch and the step inside it (``stage`` is derived)."""

    stage: int
    epoch: int
    step: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Curriculum:
    """An immutable, validated curriculum with the arithmetic the loader and trainer need.

    Build one with :meth:`preset`, :meth:`from_file`, :meth:`from_dict` or :meth:`resolve`; the
    constructor takes the stages as given at ``resolution``. ``kind`` says where it came from:
    ``etpp``, ``et`` or ``baseline`` (a preset), ``file`` or ``custom``; rules that hold only for
    the papers' schedules (the drop-path scaling) key on it, never on the name.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec],
        *,
        budget: float,
        resolution: int = REFERENCE_RESOLUTION,
        split: str = "compute",
        alpha: float = 2.0,
        baseline_budget: float = BASELINE_BUDGET,
        lr_compute: float | None = None,
        name: str = "custom",
        source: str = "schedule",
        kind: str = "custom",
    ) -> None:
        check_schedule(source, stages, budget=budget, resolution=resolution, split=split, alpha=alpha,
                       baseline_budget=baseline_budget, lr_compute=lr_compute)
        if kind not in KINDS:
            raise ScheduleError(f"{source}: kind = {kind!r}; use one of {', '.join(KINDS)}")
        self.name = name
        self.kind = kind
        self.budget = float(budget)
        self.resolution = resolution
        self.split = split
        self.alpha = float(alpha)
        self.baseline_budget = float(baseline_budget)
        self.lr_compute = None if lr_compute is None else float(lr_compute)
        self.specs: tuple[StageSpec, ...] = tuple(stages)
        self.stages: tuple[Stage, ...] = resolve_stages(self.specs, budget=self.budget, resolution=resolution,
                                                        split=split, alpha=self.alpha)
        if self.total_epochs < 1:
            raise ScheduleError(f"{source}: budget = {budget:g} gives no whole data epoch; raise the budget")

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def preset(cls, name: str = "etpp", *, family: str = "resnet", budget: float | None = None,
               resolution: int = REFERENCE_RESOLUTION, replay: bool = False, alpha: float = 2.0,
               baseline_budget: float = BASELINE_BUDGET) -> "Curriculum":
        """A schedule of the papers: ``etpp`` (10 stages of equal compute, m = stage index, bands
        per ``family``; ``replay=True`` turns on the reference's replay presets), ``et`` (5 stages
        of equal epochs) or ``baseline``; see :mod:`etpp_dali.curriculum.presets`. Bands are given at 224 and
        scaled to ``resolution``."""
        args = preset_schedule(name, family=family, budget=budget, resolution=resolution, replay=replay,
                               alpha=alpha, baseline_budget=baseline_budget)
        return cls(**args, kind=name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "schedule", resolution: int | None = None,
                  budget: float | None = None) -> "Curriculum":
        """Build from a mapping, validating every field (the keys are a schedule file's, see
        :mod:`etpp_dali.curriculum.schedule_file`). Shares left out everywhere mean equal shares.
        ``resolution``/``budget`` arguments override the mapping's (bands are rescaled)."""
        return cls(**parse_schedule(data, source=source, resolution=resolution, budget=budget))

    @classmethod
    def from_file(cls, path: str | Path, *, resolution: int | None = None,
                  budget: float | None = None) -> "Curriculum":
        """Load a YAML (``.yaml``/``.yml``) or JSON schedule file (or a recipe's ``schedule:``)."""
        data = read_schedule_file(path)
        return cls(**parse_schedule(data, source=str(path), resolution=resolution, budget=budget), kind="file")

    @classmethod
    def resolve(cls, preset: str, *, family: str = "resnet", budget: float | None = None,
                resolution: int | None = None, replay: bool = False,
                baseline_budget: float | None = None) -> "Curriculum":
        """What ``--preset`` names: a preset (``etpp``, ``et``, ``baseline``) or a schedule file;
        the other options override the preset's or the file's."""
        if preset in PRESETS:
            kwargs = {} if baseline_budget is None else {"baseline_budget": baseline_budget}
            return cls.preset(preset, family=family, budget=budget, resolution=resolution or REFERENCE_RESOLUTION,
                              replay=replay, **kwargs)
        if not Path(preset).is_file():
            raise ScheduleError(f"--preset {preset!r} is neither a preset ({', '.join(PRESETS)}) nor a schedule file")
        return cls.from_file(preset, resolution=resolution, budget=budget)

    def with_stage_batches(self, batches: Sequence[int]) -> "Curriculum":
        """The same schedule with stage k's per-device batch set to ``batches[k]`` (0: the run's
        batch); data epochs and compute do not depend on the batch."""
        if len(batches) != len(self.specs):
            raise ScheduleError(f"{len(batches)} stage batches for {len(self.specs)} stages; give one a stage")
        specs = [replace(s, batch=b) for s, b in zip(self.specs, batches)]
        return Curriculum(specs, budget=self.budget, resolution=self.resolution, split=self.split, alpha=self.alpha,
                          baseline_budget=self.baseline_budget, lr_compute=self.lr_compute, name=self.name,
                          kind=self.kind)

    def to_dict(self) -> dict[str, Any]:
        """The schedule as a mapping that :meth:`from_dict` reads back to an equal schedule."""
        span = {} if self.lr_compute is None else {"lr_compute": self.lr_compute}  # absent: older fingerprints hold
        return {"name": self.name, "budget": self.budget, "resolution": self.resolution, "split": self.split,
                "alpha": self.alpha, "baseline_budget": self.baseline_budget, **span,
                "stages": [asdict(s) for s in self.specs]}

    def fingerprint(self) -> str:
        """A short hash of the schedule, stored in checkpoints to catch a changed schedule."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Curriculum) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        bands = ",".join(str(s.band) for s in self.stages)
        return (f"Curriculum({self.name!r}, budget={self.budget:g}, resolution={self.resolution}, "
                f"bands=[{bands}], epochs={self.total_epochs})")

    # ---------------------------------------------------------------------------- arithmetic
    @property
    def total_epochs(self) -> int:
        """Data epochs over all stages (each one a full pass over the training set)."""
        return sum(s.epochs for s in self.stages)

    @property
    def total_compute(self) -> float:
        """Compute of the whole schedule, in full-resolution epochs."""
        return sum(s.compute for s in self.stages)

    def relative_compute(self, baseline_budget: float | None = None) -> float:
        """Compute against a full-resolution baseline of ``baseline_budget`` epochs."""
        return self.total_compute / (baseline_budget or self.baseline_budget)

    def speedup(self, baseline_budget: float | None = None) -> float:
        """How many times less compute than the baseline."""
        return 1.0 / self.relative_compute(baseline_budget)

    def stage_at(self, epoch: int) -> Stage:
        """The stage that data epoch ``epoch`` (0-based) belongs to."""
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's 0..{self.total_epochs - 1}")
        for stage in self.stages:
            if epoch < stage.end_epoch:
                return stage
        raise AssertionError("unreachable: stages cover every epoch")

    def steps_in_epoch(self, epoch: int, fresh_batches: int) -> int:
        """Optimiser steps in ``epoch`` when one pass yields ``fresh_batches`` fresh batches.

        With replay factor r each step uses 1/r fresh images, so an epoch has r times the steps.
        """
        return fresh_batches * self.stage_at(epoch).replay

    def compute_done(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Full-resolution epochs of compute spent before ``step`` of data epoch ``epoch``.

        ``steps_per_epoch`` counts the optimiser steps of that epoch (see :meth:`steps_in_epoch`).
        """
        if epoch >= self.total_epochs:
            return self.total_compute
        stage = self.stage_at(epoch)
        before = sum(s.compute for s in self.stages[: stage.index])
        inside = (epoch - stage.start_epoch) + min(max(step, 0), steps_per_epoch) / max(steps_per_epoch, 1)
        return before + inside * stage.replay * step_cost(stage.band, self.resolution, self.alpha)

    @property
    def lr_span(self) -> float:
        """The compute the LR schedule spans: ``lr_compute`` where set, else the whole schedule's."""
        return self.lr_compute if self.lr_compute is not None else self.total_compute

    def compute_fraction(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Fraction of :attr:`lr_span` done at (epoch, step): what LR schedules follow."""
        return self.compute_done(epoch, step, steps_per_epoch) / self.lr_span

    def warmup_fraction(self, warmup_epochs: float = 20.0) -> float:
        """Fraction of :attr:`lr_span` covered by ``warmup_epochs`` full-resolution epochs of warm-up."""
        return min(1.0, warmup_epochs / self.lr_span)

    def stage_boundaries(self) -> list[int]:
        """First data epoch of each stage."""
        return [s.start_epoch for s in self.stages]

    # ------------------------------------------------------------------------------ position
    def position(self, epoch: int, step: int = 0) -> SchedulePosition:
        """The position at ``step`` of data epoch ``epoch`` (``epoch == total_epochs`` is the end)."""
        if epoch == self.total_epochs:
            return SchedulePosition(len(self.stages), epoch, 0)
        return SchedulePosition(self.stage_at(epoch).index, epoch, step)

    def state_dict(self, position: SchedulePosition) -> dict[str, Any]:
        """The schedule and a position in it, for a checkpoint."""
        return {"schedule": self.to_dict(), "fingerprint": self.fingerprint(),
                "position": position.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> SchedulePosition:
        """Check that ``state`` was saved with this schedule and return its position."""
        if state.get("fingerprint") != self.fingerprint():
            saved = Curriculum.from_dict(state["schedule"], source="checkpoint")
            raise ScheduleError(
                f"the checkpoint was written with schedule {saved!r}, not {self!r}; "
                "resume with the same preset, budget, resolution and stage batches"
            )
        pos = state["position"]
        return self.position(int(pos["epoch"]), int(pos["step"]))

    # ------------------------------------------------------------------------------- reports
    def table(self) -> list[dict[str, Any]]:
        """One row a stage: what ``etpp schedule`` prints and ``--json`` writes."""
        return stage_table(self.stages)

    def summary(self, baseline_budget: float | None = None) -> dict[str, Any]:
        """The schedule's totals and its stages as one JSON-ready document."""
        base = baseline_budget or self.baseline_budget
        return {**self.to_dict(), "baseline_budget": base, "stages": self.table(), "data_epochs": self.total_epochs,
                "total_compute": round(self.total_compute, 4),
                "relative_compute": round(self.relative_compute(base), 4), "speedup": round(self.speedup(base), 4)}
