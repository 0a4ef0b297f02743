"""The stages of a curriculum resolved against its budget: each stage's data epochs and compute,
with the reference code's integer rounding that :mod:`etpp_dali.curriculum.schedule` describes
(:func:`resolve_stages`), and the one-row-a-stage table ``etpp schedule`` prints. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from etpp_dali.curriculum.schedule_file import StageSpec

__all__ = ["Stage", "resolve_stages", "stage_table", "step_cost"]

_FLOOR_EPS = 1e-9  # guards floor() against products like 392/10*5 = 195.99999999999997


@dataclass(frozen=True)
class Stage:
    """One resolved stage: a spec plus the data epochs and compute the budget gives it."""

    index: int
    band: int
    magnitude: float
    replay: int
    buffer: int
    share: float
    epochs: int
    start_epoch: int
    compute: float  # in full-resolution epochs
    batch: int = 0  # per-device batch of the stage; 0: the run's batch

    @property
    def end_epoch(self) -> int:
        """One past the stage's last data epoch."""
        return self.start_epoch + self.epochs


def step_cost(band: int, resolution: int, alpha: float) -> float:
    """Cost of one step at ``band`` relative to a full-resolution step."""
    return (band / resolution) ** alpha


def resolve_stages(specs: Sequence[StageSpec], *, budget: float, resolution: int, split: str,
                   alpha: float) -> tuple[Stage, ...]:
    """The stages of ``specs`` under ``budget`` (full-resolution epochs of compute for split
    ``compute``, data epochs for ``epochs``), with the reference code's rounding."""
    stages = []
    cumulative = 0.0
    start = 0
    for i, spec in enumerate(specs):
        cost = step_cost(spec.band, resolution, alpha)
        scale = 1.0 / cost if split == "compute" else 1.0
        whole_run = math.floor(budget * scale / spec.replay + _FLOOR_EPS)
        lo = math.floor(whole_run * cumulative + _FLOOR_EPS)
        cumulative += spec.share
        hi = math.floor(whole_run * min(cumulative, 1.0) + _FLOOR_EPS)
        epochs = hi - lo
        stages.append(Stage(i, spec.band, float(spec.magnitude), spec.replay, spec.buffer,
                            spec.share, epochs, start, epochs * spec.replay * cost, spec.batch))
        start += epochs
    return tuple(stages)


def stage_table(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    """One row a stage, compute shares against the stages' total."""
    total = sum(s.compute for s in stages)
    rows, cumulative = [], 0.0
    for s in stages:
        cumulative += s.compute
        rows.append({
            "stage": s.index, "band": s.band, "magnitude": s.magnitude, "replay": s.replay, "batch": s.batch,
            "epochs": s.epochs, "start_epoch": s.start_epoch, "end_epoch": s.end_epoch,
            "compute": round(s.compute, 4), "compute_share": round(s.compute / total, 4),
            "cumulative_compute": round(cumulative / total, 4),
        })
    return rows
