"""The written form of a schedule: :class:`StageSpec`, the YAML/JSON schedule file, and the
checks every schedule passes, whether read from a file or built from a preset.

A schedule file::

    budget: 200          # E: full-resolution epochs of compute (split: compute) or data epochs
    resolution: 224      # the resolution the bands are given at; --resolution rescales them
    split: compute       # compute (EfficientTrain++) or epochs (EfficientTrain)
    alpha: 2             # a step at band B costs (B/R)^alpha of a full-resolution step
    baseline_budget: 300 # the full-resolution baseline that speed-ups are taken against
    lr_compute: 200      # optional: the compute (full-resolution epochs) the LR warm-up and cosine span
    name: my-schedule
    stages:              # shares (of the budget) default to equal
      - {band: 96, magnitude: 0}
      - {band: 160, magnitude: 4, replay: 2, buffer: 256}
      - {band: 224, magnitude: 9}

A recipe file holding such a mapping under ``schedule:`` is read the same way. This module
imports neither torch nor DALI.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

__all__ = ["BASELINE_BUDGET", "DEFAULT_BUDGET", "MIN_BAND", "REFERENCE_RESOLUTION", "SPLITS", "ScheduleError",
           "StageSpec", "check_schedule", "parse_schedule", "read_schedule_file", "scale_band"]

BASELINE_BUDGET = 300  # epochs of the standard full-resolution recipe the papers compare with
DEFAULT_BUDGET = 200.0  # E of a file that gives none: EfficientTrain++'s 1.5x point
REFERENCE_RESOLUTION = 224  # the resolution at which the presets' bands are given
MIN_BAND = 16
SPLITS = ("compute", "epochs")
_SHARE_TOLERANCE = 1e-6
_FILE_KEYS = ("stages", "budget", "resolution", "split", "alpha", "baseline_budget", "lr_compute", "name")
_STAGE_KEYS = ("band", "magnitude", "share", "replay", "buffer", "batch")


class ScheduleError(ValueError):
    """A schedule that cannot be built; the message names the field and the value."""


@dataclass(frozen=True)
class StageSpec:
    """What a user writes down for one stage.

    ``share`` is the stage's share of the budget (of compute or of epochs, per the schedule's
    ``split``). ``replay`` r: the loader decodes 1/r of each batch fresh and draws the rest from
    a buffer of recent samples, so the stage needs r times fewer data epochs for the same steps.
    ``buffer`` is the replay buffer's capacity in samples per rank (0: a default from the batch size).
    ``batch`` is the stage's per-device batch (0: the run's batch); the trainer accumulates
    gradients so that every optimiser step still sees the run's global batch.
    """

    band: int
    magnitude: float
    share: float
    replay: int = 1
    buffer: int = 0
    batch: int = 0


def scale_band(band: int, resolution: int, reference_resolution: int = REFERENCE_RESOLUTION) -> int:
    """Scale a band given at ``reference_resolution`` to ``resolution``.

    The result is rounded to an even number, at least 16 and at most ``resolution``.
    """
    if resolution == reference_resolution:
        return int(band)
    scaled = 2 * round(band * resolution / reference_resolution / 2)
    return int(min(resolution, max(MIN_BAND, scaled)))


# ------------------------------------------------------------------------------ reading
def read_schedule_file(path: str | Path) -> Any:
    """The parsed content of a YAML (``.yaml``/``.yml``) or JSON schedule file, or of a recipe's
    ``schedule:`` section."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read the schedule file ({exc.strerror or exc})") from None
    is_json = path.suffix.lower() == ".json"
    try:
        if is_json:
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:  # the parsers raise many types; the message is what matters
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScheduleError(f"{path}: not valid {'JSON' if is_json else 'YAML'} ({first})") from None
    if isinstance(data, Mapping) and "schedule" in data and "stages" not in data:
        data = data["schedule"]  # a recipe file holding a schedule section
    return data


def parse_schedule(data: Any, *, source: str = "schedule", resolution: int | None = None,
                   budget: float | None = None) -> dict[str, Any]:
    """Check a schedule mapping and turn it into the ``Curriculum`` constructor's arguments.

    ``resolution``/``budget`` override the mapping's (the bands are rescaled to ``resolution``).
    """
    if not isinstance(data, Mapping):
        raise ScheduleError(f"{source}: the top level is a {type(data).__name__}, not a mapping")
    _reject_unknown(source, "", data, _FILE_KEYS)
    if "stages" not in data:
        raise ScheduleError(f"{source}: 'stages' is missing; list the stages")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise ScheduleError(f"{source}: stages must be a non-empty list")
    file_resolution = data.get("resolution", REFERENCE_RESOLUTION)
    if not _is_int(file_resolution) or file_resolution < MIN_BAND:
        raise ScheduleError(f"{source}: resolution = {file_resolution!r} is not an integer >= {MIN_BAND}")
    specs = _parse_stages(source, data["stages"], file_resolution)
    target = file_resolution if resolution is None else resolution
    if target != file_resolution:
        if not _is_int(target) or target < MIN_BAND:
            raise ScheduleError(f"--resolution {target!r} is not an integer >= {MIN_BAND}")
        specs = [dataclasses.replace(s, band=scale_band(s.band, target, file_resolution)) for s in specs]
    return {
        "stages": specs,
        "budget": data.get("budget", DEFAULT_BUDGET) if budget is None else budget,
        "resolution": target,
        "split": data.get("split", "compute"),
        "alpha": data.get("alpha", 2.0),
        "baseline_budget": data.get("baseline_budget", BASELINE_BUDGET),
        # the span belongs to the file's budget: a --budget override spans its own compute
        "lr_compute": data.get("lr_compute") if budget is None else None,
        "name": str(data.get("name", Path(source).stem if source != "schedule" else "custom")),
        "source": source,
    }


def _parse_stages(source: str, raw_stages: list[Any], resolution: int) -> list[StageSpec]:
    has_share = [isinstance(s, Mapping) and "share" in s for s in raw_stages]
    if any(has_share) and not all(has_share):
        raise ScheduleError(f"{source}: some stages give a share and some do not; give all or none")
    specs = []
    for i, raw in enumerate(raw_stages):
        if not isinstance(raw, Mapping):
            raise ScheduleError(f"{source}: stages[{i}] is a {type(raw).__name__}, not a mapping")
        _reject_unknown(source, f"stages[{i}].", raw, _STAGE_KEYS)
        for key in ("band", "magnitude"):
            if key not in raw:
                raise ScheduleError(f"{source}: stages[{i}].{key} is missing")
        spec = StageSpec(band=raw["band"], magnitude=raw["magnitude"], share=raw.get("share", 1 / len(raw_stages)),
                         replay=raw.get("replay", 1), buffer=raw.get("buffer", 0), batch=raw.get("batch", 0))
        _check_stage(source, i, spec, resolution)
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------- validation
def check_schedule(source: str, stages: Sequence[StageSpec], *, budget: Any, resolution: Any, split: Any,
                   alpha: Any, baseline_budget: Any, lr_compute: Any = None) -> None:
    """Raise :class:`ScheduleError` naming ``source``, the field and the value of the first
    setting that makes no schedule."""
    _check_number(source, "budget", budget, low=0.0, open_low=True)
    if lr_compute is not None:
        _check_number(source, "lr_compute", lr_compute, low=0.0, open_low=True)
    _check_number(source, "baseline_budget", baseline_budget, low=0.0, open_low=True)
    _check_number(source, "alpha", alpha, low=0.0, open_low=True)
    if not _is_int(resolution) or resolution < MIN_BAND:
        raise ScheduleError(
            f"{source}: resolution = {resolution!r} is not an integer >= {MIN_BAND}; give the full input side in pixels"
        )
    if split not in SPLITS:
        raise ScheduleError(f"{source}: split = {split!r}; use one of {', '.join(SPLITS)}")
    if not stages:
        raise ScheduleError(f"{source}: stages is empty; give at least one stage")
    for i, spec in enumerate(stages):
        _check_stage(source, i, spec, resolution)
    total_share = sum(s.share for s in stages)
    if abs(total_share - 1.0) > _SHARE_TOLERANCE:
        raise ScheduleError(
            f"{source}: stage shares sum to {total_share:.6g}, not 1; "
            "make them add up to 1 or leave every share out for equal shares"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(source: str, field: str, value: Any, *, low: float, open_low: bool = False,
                  high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        if high is not None:
            bound += f" and <= {high:g}"
        raise ScheduleError(f"{source}: {field} = {value!r} is invalid; it must be a number {bound}")


def _check_stage(source: str, i: int, spec: StageSpec, resolution: int) -> None:
    where = f"stages[{i}]"
    band = spec.band
    if not _is_int(band):
        raise ScheduleError(f"{source}: {where}.band = {band!r} is not an integer number of pixels")
    if band > resolution or band < MIN_BAND:
        raise ScheduleError(
            f"{source}: {where}.band = {band} is outside {MIN_BAND}..{resolution} "
            f"(the resolution); use a band between {MIN_BAND} and {resolution}"
        )
    _check_number(source, f"{where}.magnitude", spec.magnitude, low=0.0, high=10.0)
    _check_number(source, f"{where}.share", spec.share, low=0.0, open_low=True, high=1.0)
    if not _is_int(spec.replay) or spec.replay < 1:
        raise ScheduleError(f"{source}: {where}.replay = {spec.replay!r} is invalid; use an integer >= 1")
    if not _is_int(spec.buffer) or spec.buffer < 0:
        raise ScheduleError(f"{source}: {where}.buffer = {spec.buffer!r} is invalid; use an integer >= 0")
    if not _is_int(spec.batch) or spec.batch < 0:
        raise ScheduleError(f"{source}: {where}.batch = {spec.batch!r} is invalid; use an integer >= 1 "
                            "(or 0 for the run's batch)")


def _reject_unknown(source: str, prefix: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise ScheduleError(f"{source}: unknown key {prefix}{key!r}; known keys are {', '.join(sorted(allowed))}")
