"""EfficientTrain and EfficientTrain++ curricula as plain data.

A curriculum is an ordered list of stages. In stage k every image is shown through a
``B_k x B_k`` low-frequency window (the band), with RandAugment at magnitude ``m_k`` (timm's
0..10 scale) and replay factor ``r_k`` (the loader decodes ``1/r_k`` of each batch fresh and
draws the rest from a buffer of recent samples, METHOD.md section 4).

Budget arithmetic (METHOD.md section 3). ``R`` is the full resolution, ``alpha`` the model-cost
exponent (a step at band ``B`` costs ``(B/R)**alpha`` of a full-resolution step; 2 for
convnets and for ViTs at a fixed patch size, ignoring attention's extra quadratic term).

- ``split="compute"`` (EfficientTrain++): the budget ``E`` is counted in full-resolution
  epochs and stage k owns the share ``s_k`` of it, so it runs ``s_k E (R/B_k)**alpha / r_k``
  data epochs. Rounding follows the reference code's integer arithmetic::

      P_k = floor(E (R/B_k)**alpha / r_k)             # a whole run at stage k's settings
      n_k = floor(P_k C_{k+1}) - floor(P_k C_k)        # C_k = s_0 + ... + s_{k-1}

  which gives 108, 109, 39, 39, 40, 39, 20, 20, 20, 20 = 454 data epochs for ResNet at E = 200.
- ``split="epochs"`` (EfficientTrain): ``E`` is the number of data epochs and stage k runs the
  share ``s_k`` of them (same rounding with ``P_k = floor(E / r_k)``).

The compute of stage k, in full-resolution epochs, is ``n_k r_k (B_k/R)**alpha``; relative
compute and speed-up are taken against a baseline budget (300 epochs by default).

This module imports neither torch nor DALI: the loader and the trainer query it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "BASELINE_BUDGET",
    "FAMILIES",
    "PRESETS",
    "Curriculum",
    "ScheduleError",
    "SchedulePosition",
    "Stage",
    "StageSpec",
    "scale_band",
]

BASELINE_BUDGET = 300  # epochs of the standard full-resolution recipe the papers compare with
REFERENCE_RESOLUTION = 224  # the resolution at which the presets' bands are given
MIN_BAND = 16
_SHARE_TOLERANCE = 1e-6
_FLOOR_EPS = 1e-9  # guards floor() against products like 392/10*5 = 195.99999999999997

# EfficientTrain++ bands per model family (10 stages, METHOD.md section 3).
FAMILIES: dict[str, tuple[int, ...]] = {
    "resnet": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "swin": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "cswin": (96,) * 2 + (160,) * 4 + (224,) * 4,
    "convnext": (160,) * 6 + (224,) * 4,
    "deit": (96,) * 2 + (160,) * 4 + (192,) * 2 + (224,) * 2,
}

# Replay presets of the reference code (METHOD.md section 4): band -> (replay factor, buffer
# capacity in samples per rank). Off unless asked for.
_REPLAY_PRESETS: dict[str, dict[int, tuple[int, int]]] = {
    "resnet": {96: (4, 1920), 160: (2, 256)},
    "deit": {96: (4, 1920), 160: (2, 256)},
    "swin": {96: (2, 1024)},
    "cswin": {96: (2, 1024)},
    "convnext": {},
}

PRESETS = ("etpp", "et", "baseline")
_DEFAULT_BUDGET = {"etpp": 200.0, "et": 300.0, "baseline": 300.0}
_SPLITS = ("compute", "epochs")


class ScheduleError(ValueError):
    """A schedule that cannot be built; the message names the field and the value."""


def scale_band(band: int, resolution: int, reference_resolution: int = REFERENCE_RESOLUTION) -> int:
    """Scale a band given at ``reference_resolution`` to ``resolution``.

    The result is rounded to an even number, at least 16 and at most ``resolution``.
    """
    if resolution == reference_resolution:
        return int(band)
    scaled = 2 * round(band * resolution / reference_resolution / 2)
    return int(min(resolution, max(MIN_BAND, scaled)))


@dataclass(frozen=True)
class StageSpec:
    """What a user writes down for one stage.

    ``share`` is the stage's share of the budget (of compute or of epochs, per the schedule's
    ``split``). ``buffer`` is the replay buffer capacity in samples per rank (0: pick a default
    from the batch size).
    """

    band: int
    magnitude: float
    share: float
    replay: int = 1
    buffer: int = 0


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

    @property
    def end_epoch(self) -> int:
        """One past the stage's last data epoch."""
        return self.start_epoch + self.epochs


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

    Build one with :meth:`preset`, :meth:`from_file` or :meth:`from_dict`; the constructor
    takes the stages as given at ``resolution``.
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
        name: str = "custom",
        source: str = "schedule",
        kind: str = "custom",
    ) -> None:
        _check_number(source, "budget", budget, low=0.0, open_low=True)
        _check_number(source, "baseline_budget", baseline_budget, low=0.0, open_low=True)
        _check_number(source, "alpha", alpha, low=0.0, open_low=True)
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < MIN_BAND:
            raise ScheduleError(
                f"{source}: resolution = {resolution!r} is not an integer >= {MIN_BAND}; "
                "give the full input side in pixels"
            )
        if split not in _SPLITS:
            raise ScheduleError(f"{source}: split = {split!r}; use one of {', '.join(_SPLITS)}")
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
        self.name = name
        self.kind = kind
        self.budget = float(budget)
        self.resolution = resolution
        self.split = split
        self.alpha = float(alpha)
        self.baseline_budget = float(baseline_budget)
        self.specs: tuple[StageSpec, ...] = tuple(stages)
        self.stages: tuple[Stage, ...] = self._resolve()
        if self.total_epochs < 1:
            raise ScheduleError(
                f"{source}: budget = {budget:g} gives no whole data epoch; raise the budget"
            )

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def preset(
        cls,
        name: str = "etpp",
        *,
        family: str = "resnet",
        budget: float | None = None,
        resolution: int = REFERENCE_RESOLUTION,
        replay: bool = False,
        alpha: float = 2.0,
        baseline_budget: float = BASELINE_BUDGET,
    ) -> "Curriculum":
        """A schedule of the papers (METHOD.md section 3).

        ``etpp``: EfficientTrain++, 10 stages of equal compute, m = stage index, bands per
        ``family``; ``replay=True`` turns on the reference's replay presets.
        ``et``: EfficientTrain, 5 stages of equal epochs, B = 160 x3, 192, 224, m = 1, 3, 5, 7, 9.
        ``baseline``: one full-resolution stage at m = 9.
        Bands are given at 224 and scaled to ``resolution``.
        """
        if name not in PRESETS:
            raise ScheduleError(f"--preset {name!r} is unknown; use one of {', '.join(PRESETS)} or a file")
        if family not in FAMILIES:
            raise ScheduleError(f"--family {family!r} is unknown; use one of {', '.join(FAMILIES)}")
        if budget is None:
            budget = _DEFAULT_BUDGET[name]
        if name == "etpp":
            bands = FAMILIES[family]
            presets = _REPLAY_PRESETS[family] if replay else {}
            specs = [
                StageSpec(band=b, magnitude=float(k), share=1 / len(bands),
                          replay=presets.get(b, (1, 0))[0], buffer=presets.get(b, (1, 0))[1])
                for k, b in enumerate(bands)
            ]
            split = "compute"
        elif name == "et":
            specs = [StageSpec(band=b, magnitude=float(m), share=0.2)
                     for b, m in zip((160, 160, 160, 192, 224), (1, 3, 5, 7, 9))]
            split = "epochs"
        else:
            specs = [StageSpec(band=REFERENCE_RESOLUTION, magnitude=9.0, share=1.0)]
            split = "compute"
        scaled = [
            StageSpec(scale_band(s.band, resolution), s.magnitude, s.share, s.replay, s.buffer)
            for s in specs
        ]
        label = f"{name}-{family}" if name == "etpp" else name
        return cls(scaled, budget=budget, resolution=resolution, split=split, alpha=alpha,
                   baseline_budget=baseline_budget, name=label, source=f"preset {name}", kind=name)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "schedule", resolution: int | None = None,
        budget: float | None = None,
    ) -> "Curriculum":
        """Build from a mapping (the YAML/JSON schema below), validating every field.

        Keys: ``stages`` (list of ``{band, magnitude, share?, replay?, buffer?}``), ``budget``,
        ``resolution`` (what the bands are given at, default 224), ``split``, ``alpha``,
        ``baseline_budget``, ``name``. Shares left out everywhere mean equal shares.
        ``resolution``/``budget`` arguments override the file (bands are rescaled).
        """
        if not isinstance(data, Mapping):
            raise ScheduleError(f"{source}: the top level is a {type(data).__name__}, not a mapping")
        allowed = {"stages", "budget", "resolution", "split", "alpha", "baseline_budget", "name"}
        _reject_unknown(source, "", data, allowed)
        if "stages" not in data:
            raise ScheduleError(f"{source}: 'stages' is missing; list the stages")
        raw_stages = data["stages"]
        if not isinstance(raw_stages, list) or not raw_stages:
            raise ScheduleError(f"{source}: stages must be a non-empty list")
        file_resolution = data.get("resolution", REFERENCE_RESOLUTION)
        if not isinstance(file_resolution, int) or isinstance(file_resolution, bool) or file_resolution < MIN_BAND:
            raise ScheduleError(f"{source}: resolution = {file_resolution!r} is not an integer >= {MIN_BAND}")
        has_share = [isinstance(s, Mapping) and "share" in s for s in raw_stages]
        if any(has_share) and not all(has_share):
            raise ScheduleError(f"{source}: some stages give a share and some do not; give all or none")
        specs = []
        for i, raw in enumerate(raw_stages):
            if not isinstance(raw, Mapping):
                raise ScheduleError(f"{source}: stages[{i}] is a {type(raw).__name__}, not a mapping")
            _reject_unknown(source, f"stages[{i}].", raw, {"band", "magnitude", "share", "replay", "buffer"})
            for key in ("band", "magnitude"):
                if key not in raw:
                    raise ScheduleError(f"{source}: stages[{i}].{key} is missing")
            spec = StageSpec(
                band=raw["band"],
                magnitude=raw["magnitude"],
                share=raw.get("share", 1 / len(raw_stages)),
                replay=raw.get("replay", 1),
                buffer=raw.get("buffer", 0),
            )
            _check_stage(source, i, spec, file_resolution)
            specs.append(spec)
        target = file_resolution if resolution is None else resolution
        if target != file_resolution:
            if not isinstance(target, int) or target < MIN_BAND:
                raise ScheduleError(f"--resolution {target!r} is not an integer >= {MIN_BAND}")
            specs = [StageSpec(scale_band(s.band, target, file_resolution), s.magnitude, s.share,
                               s.replay, s.buffer) for s in specs]
        return cls(
            specs,
            budget=data.get("budget", _DEFAULT_BUDGET["etpp"]) if budget is None else budget,
            resolution=target,
            split=data.get("split", "compute"),
            alpha=data.get("alpha", 2.0),
            baseline_budget=data.get("baseline_budget", BASELINE_BUDGET),
            name=str(data.get("name", Path(source).stem if source != "schedule" else "custom")),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path, *, resolution: int | None = None,
                  budget: float | None = None) -> "Curriculum":
        """Load a YAML (``.yaml``/``.yml``) or JSON file; see :meth:`from_dict` for the keys."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScheduleError(f"{path}: cannot read the schedule file ({exc.strerror or exc})") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml  # a dependency of the package; kept local so the module stays light

                data = yaml.safe_load(text)
        except Exception as exc:  # the parsers raise many types; the message is what matters
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ScheduleError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
        if isinstance(data, Mapping) and "schedule" in data and "stages" not in data:
            data = data["schedule"]  # a recipe file holding a schedule section
        return cls.from_dict(data, source=str(path), resolution=resolution, budget=budget)

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

    def to_dict(self) -> dict[str, Any]:
        """The schedule as a mapping that :meth:`from_dict` reads back to an equal schedule."""
        return {
            "name": self.name,
            "budget": self.budget,
            "resolution": self.resolution,
            "split": self.split,
            "alpha": self.alpha,
            "baseline_budget": self.baseline_budget,
            "stages": [asdict(s) for s in self.specs],
        }

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
    def _cost(self, band: int) -> float:
        """Cost of one step at ``band`` relative to a full-resolution step."""
        return (band / self.resolution) ** self.alpha

    def _resolve(self) -> tuple[Stage, ...]:
        stages = []
        cumulative = 0.0
        start = 0
        for i, spec in enumerate(self.specs):
            scale = 1.0 / self._cost(spec.band) if self.split == "compute" else 1.0
            whole_run = math.floor(self.budget * scale / spec.replay + _FLOOR_EPS)
            lo = math.floor(whole_run * cumulative + _FLOOR_EPS)
            cumulative += spec.share
            hi = math.floor(whole_run * min(cumulative, 1.0) + _FLOOR_EPS)
            epochs = hi - lo
            compute = epochs * spec.replay * self._cost(spec.band)
            stages.append(Stage(i, spec.band, float(spec.magnitude), spec.replay, spec.buffer,
                                spec.share, epochs, start, compute))
            start += epochs
        return tuple(stages)

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
        return before + inside * stage.replay * self._cost(stage.band)

    def compute_fraction(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Fraction of the schedule's compute done at (epoch, step): what LR schedules follow."""
        return self.compute_done(epoch, step, steps_per_epoch) / self.total_compute

    def warmup_fraction(self, warmup_epochs: float = 20.0) -> float:
        """Compute fraction covered by ``warmup_epochs`` full-resolution epochs of warm-up."""
        return min(1.0, warmup_epochs / self.total_compute)

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
                "resume with the same preset, budget and resolution"
            )
        pos = state["position"]
        return self.position(int(pos["epoch"]), int(pos["step"]))

    # ------------------------------------------------------------------------------- reports
    def table(self) -> list[dict[str, Any]]:
        """One row a stage: what ``etpp schedule`` prints and ``--json`` writes."""
        total = self.total_compute
        rows, cumulative = [], 0.0
        for s in self.stages:
            cumulative += s.compute
            rows.append({
                "stage": s.index, "band": s.band, "magnitude": s.magnitude, "replay": s.replay,
                "epochs": s.epochs, "start_epoch": s.start_epoch, "end_epoch": s.end_epoch,
                "compute": round(s.compute, 4), "compute_share": round(s.compute / total, 4),
                "cumulative_compute": round(cumulative / total, 4),
            })
        return rows

    def summary(self, baseline_budget: float | None = None) -> dict[str, Any]:
        """The schedule's totals and its stages as one JSON-ready document."""
        base = baseline_budget or self.baseline_budget
        return {
            **self.to_dict(),
            "baseline_budget": base,
            "stages": self.table(),
            "data_epochs": self.total_epochs,
            "total_compute": round(self.total_compute, 4),
            "relative_compute": round(self.relative_compute(base), 4),
            "speedup": round(self.speedup(base), 4),
        }


# ----------------------------------------------------------------------------- validation
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
    if not isinstance(band, int) or isinstance(band, bool):
        raise ScheduleError(f"{source}: {where}.band = {band!r} is not an integer number of pixels")
    if band > resolution or band < MIN_BAND:
        raise ScheduleError(
            f"{source}: {where}.band = {band} is outside {MIN_BAND}..{resolution} "
            f"(the resolution); use a band between {MIN_BAND} and {resolution}"
        )
    _check_number(source, f"{where}.magnitude", spec.magnitude, low=0.0, high=10.0)
    _check_number(source, f"{where}.share", spec.share, low=0.0, open_low=True, high=1.0)
    if not isinstance(spec.replay, int) or isinstance(spec.replay, bool) or spec.replay < 1:
        raise ScheduleError(f"{source}: {where}.replay = {spec.replay!r} is invalid; use an integer >= 1")
    if not isinstance(spec.buffer, int) or isinstance(spec.buffer, bool) or spec.buffer < 0:
        raise ScheduleError(f"{source}: {where}.buffer = {spec.buffer!r} is invalid; use an integer >= 0")


def _reject_unknown(source: str, prefix: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise ScheduleError(
                f"{source}: unknown key {prefix}{key!r}; known keys are {', '.join(sorted(allowed))}"
            )
