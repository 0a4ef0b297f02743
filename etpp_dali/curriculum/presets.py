"""The schedules of the papers, as tables, and the presets built from them.

``etpp`` (EfficientTrain++): 10 stages, each with an equal share of the *compute* budget. The
budget E is counted in full-resolution epochs; stage k (k = 0..9) uses RandAugment magnitude
m = k and its family's band B_k, and runs about (E/10) (R/B_k)^2 data epochs (the reference's
integer arithmetic, see :mod:`etpp_dali.curriculum.schedule`; ResNet at E = 200: 454 data epochs).
Against a 300-epoch baseline the speed-up is 300/E: 1.5x at E = 200, 2x at 150, 3x at 100.

``et`` (EfficientTrain): 5 equal stages of E/5 data epochs (E = 300, the baseline's epochs),
bands 160, 160, 160, 192, 224 and m = 1, 3, 5, 7, 9: 0.653 of the baseline's compute (1.53x).

``baseline``: one full-resolution stage at m = 9.

Bands are given at 224 and scaled to the run's resolution. This module imports neither torch
nor DALI.
"""

from __future__ import annotations

from typing import Any

from etpp_dali.curriculum.schedule_file import (
    BASELINE_BUDGET,
    DEFAULT_BUDGET,
    REFERENCE_RESOLUTION,
    ScheduleError,
    StageSpec,
    scale_band,
)

__all__ = ["FAMILIES", "PRESETS", "REPLAY_PRESETS", "preset_schedule"]

PRESETS = ("etpp", "et", "baseline")

# EfficientTrain++ bands per model family, one per stage.
FAMILIES: dict[str, tuple[int, ...]] = {
    "resnet": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "swin": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "cswin": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "convnext": (160,) * 6 + (224,) * 4,
    "deit": (96,) * 2 + (160,) * 4 + (192,) * 2 + (224,) * 2,
}

# The reference code's replay presets: band -> (replay factor, buffer capacity in samples per
# rank). At small bands a step is cheap enough that decoding becomes the bottleneck (a 96-px
# stage wants up to (224/96)^2 = 5.4x the images/sec of a 224-px one); replay r decodes 1/r of
# each batch. Off unless asked for.
REPLAY_PRESETS: dict[str, dict[int, tuple[int, int]]] = {
    "resnet": {96: (4, 1920), 160: (2, 256)},
    "deit": {96: (4, 1920), 160: (2, 256)},
    "swin": {96: (2, 1024)},
    "cswin": {96: (2, 1024)},
    "convnext": {},
}

_DEFAULT_BUDGET = {"etpp": DEFAULT_BUDGET, "et": float(BASELINE_BUDGET), "baseline": float(BASELINE_BUDGET)}
_ET_BANDS = (160, 160, 160, 192, 224)
_ET_MAGNITUDES = (1, 3, 5, 7, 9)
_BASELINE_MAGNITUDE = 9.0


def preset_schedule(name: str, *, family: str = "resnet", budget: float | None = None,
                    resolution: int = REFERENCE_RESOLUTION, replay: bool = False, alpha: float = 2.0,
                    baseline_budget: float = BASELINE_BUDGET) -> dict[str, Any]:
    """The ``Curriculum`` constructor's arguments for preset ``name`` (etpp, et or baseline);
    ``family`` picks the etpp bands, ``replay=True`` turns on the reference's replay presets."""
    if name not in PRESETS:
        raise ScheduleError(f"--preset {name!r} is unknown; use one of {', '.join(PRESETS)} or a file")
    if family not in FAMILIES:
        raise ScheduleError(f"--family {family!r} is unknown; use one of {', '.join(FAMILIES)}")
    if name == "etpp":
        bands = FAMILIES[family]
        replays = REPLAY_PRESETS[family] if replay else {}
        specs = [StageSpec(band=b, magnitude=float(k), share=1 / len(bands), replay=replays.get(b, (1, 0))[0],
                           buffer=replays.get(b, (1, 0))[1]) for k, b in enumerate(bands)]
        split = "compute"
    elif name == "et":
        specs = [StageSpec(band=b, magnitude=float(m), share=1 / len(_ET_BANDS))
                 for b, m in zip(_ET_BANDS, _ET_MAGNITUDES)]
        split = "epochs"
    else:
        specs = [StageSpec(band=REFERENCE_RESOLUTION, magnitude=_BASELINE_MAGNITUDE, share=1.0)]
        split = "compute"
    scaled = [StageSpec(scale_band(s.band, resolution), s.magnitude, s.share, s.replay, s.buffer) for s in specs]
    return {"stages": scaled, "budget": _DEFAULT_BUDGET[name] if budget is None else budget,
            "resolution": resolution, "split": split, "alpha": alpha, "baseline_budget": baseline_budget,
            "name": f"{name}-{family}" if name == "etpp" else name, "source": f"preset {name}"}
