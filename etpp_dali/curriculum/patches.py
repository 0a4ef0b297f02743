"""A curriculum for a ViT that is fed whole patches: every band a multiple of the patch size,
and the schedule of masked-autoencoder (MAE) pre-training. Torch-free.

A ViT cuts a B x B input into (B / p)^2 patches, so a band the patch size p does not divide
would drop its last rows and columns. A preset's bands (given at 224 and scaled to the run's
resolution) are rounded to the nearest multiple of p, at least p and at most R; a schedule file
names its bands itself, so one that breaks the rule is refused with the stage it breaks it at.

For MAE the curriculum keeps its bands and compute shares but not its augmentation: MAE sees
random-resized crops and flips only, so every stage's RandAugment magnitude is 0. A stage at
band B runs (B / p)^2 tokens, of which the encoder sees the unmasked ``1 - mask_ratio``; its
step costs about (B / R)^2 of a full-resolution step, the schedule's ``alpha = 2`` cost model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from etpp_dali.curriculum.presets import PRESETS
from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.curriculum.schedule_file import ScheduleError
from etpp_dali.curriculum.stages import step_cost

__all__ = ["MAE_MASK_RATIO", "mae_curriculum", "patch_curriculum", "round_band", "token_table", "visible_tokens"]

MAE_MASK_RATIO = 0.75


def round_band(band: int, patch: int, resolution: int) -> int:
    """``band`` rounded to the nearest multiple of ``patch`` (halves round up), within patch..resolution."""
    return min(resolution, max(patch, patch * int((band + patch / 2) // patch)))


def patch_curriculum(cur: Curriculum, patch: int, *, augment: bool = True) -> Curriculum:
    """``cur`` with every band a multiple of ``patch``: a preset's rounded to it, a schedule
    file's checked (:class:`ScheduleError` names the first stage that breaks the rule). With
    ``augment=False`` every stage's RandAugment magnitude is 0 (MAE's augmentation)."""
    if patch < 1:
        raise ScheduleError(f"patch size {patch} must be >= 1")
    if cur.resolution % patch:
        raise ScheduleError(f"resolution {cur.resolution} is not a multiple of the patch size {patch}; "
                            f"use a resolution of k x {patch}")
    rounds = cur.kind in PRESETS
    specs = []
    for index, spec in enumerate(cur.specs):
        if not rounds and spec.band % patch:
            nearest = round_band(spec.band, patch, cur.resolution)
            raise ScheduleError(f"{cur.name}: stage {index}'s band {spec.band} is not a multiple of the patch size "
                                f"{patch}; give bands of k x {patch} (e.g. {nearest})")
        band = round_band(spec.band, patch, cur.resolution) if rounds else spec.band
        specs.append(replace(spec, band=band, magnitude=spec.magnitude if augment else 0.0))
    return Curriculum(specs, budget=cur.budget, resolution=cur.resolution, split=cur.split, alpha=cur.alpha,
                      baseline_budget=cur.baseline_budget, name=cur.name, kind=cur.kind)


def mae_curriculum(cur: Curriculum, patch: int) -> Curriculum:
    """The MAE schedule of ``cur``: bands on the patch grid, no RandAugment, renamed ``mae-<name>``."""
    out = patch_curriculum(cur, patch, augment=False)
    return Curriculum(out.specs, budget=out.budget, resolution=out.resolution, split=out.split, alpha=out.alpha,
                      baseline_budget=out.baseline_budget, name=f"mae-{cur.name}", kind=cur.kind)


def visible_tokens(tokens: int, mask_ratio: float) -> int:
    """The tokens MAE's encoder keeps of ``tokens`` at ``mask_ratio`` (at least one)."""
    return max(1, int(tokens * (1.0 - mask_ratio)))


def token_table(cur: Curriculum, patch: int, mask_ratio: float = MAE_MASK_RATIO) -> list[dict[str, Any]]:
    """One row a stage of an MAE schedule: band, patch grid, tokens, the encoder's visible tokens,
    the step's cost against a full-resolution step, data epochs and compute (full-resolution epochs)."""
    rows = []
    for stage in cur.stages:
        grid = stage.band // patch
        rows.append({"stage": stage.index, "band": stage.band, "grid": f"{grid}x{grid}", "tokens": grid * grid,
                     "visible": visible_tokens(grid * grid, mask_ratio),
                     "step_cost": round(step_cost(stage.band, cur.resolution, cur.alpha), 4),
                     "epochs": stage.epochs, "compute": round(stage.compute, 4)})
    return rows
