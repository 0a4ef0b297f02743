"""A run's settings: :class:`TrainConfig`, the recipe files that fill it, and their checks.

A recipe (``pipelines/*.yaml``) sets TrainConfig keys; command-line flags override them. This
module imports neither torch nor DALI, so recipes can be read and checked anywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .curriculum import Curriculum, ScheduleError

__all__ = ["DROP_PATH_REFERENCE_BUDGET", "RecipeError", "TrainConfig", "load_recipe"]

# The reference recipes give drop-path at E = 200 and scale it by E / 200 with the budget of
# their curricula (the etpp and et presets); a baseline or a schedule file keeps the rate given.
DROP_PATH_REFERENCE_BUDGET = 200.0
_DROP_PATH_SCALED_KINDS = ("etpp", "et")


class RecipeError(ValueError):
    """A recipe or option that cannot be used; the message names the key or flag."""


@dataclass
class TrainConfig:
    """Every setting of a run. Recipes (YAML) set these keys; command-line flags override them."""

    name: str = "run"
    data: str | None = "demo"          # a data set path, "demo" for the embedded demo set
    val_split: float | None = None     # hold out this fraction of train when there is no val/
    model: str = "resnet10t"
    # schedule: a preset (etpp, et, baseline) or a schedule file, with its knobs
    preset: str = "etpp"
    family: str = "resnet"
    budget: float | None = None
    resolution: int = 224
    replay: bool = False
    baseline: bool = False              # train without the curriculum: full size, m = 9
    baseline_budget: float | None = None  # epochs of the baseline (default: the schedule's)
    # optimisation
    batch_size: int = 256               # global batch per step
    lr: float | None = None             # absolute lr; default: base_lr * batch_size / lr_base_batch
    base_lr: float = 4e-3
    lr_base_batch: int = 4096
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 20.0         # full-resolution epochs of compute
    warmup_fraction: float | None = None  # or a fraction of the budget (DeiT: 0.2)
    clip_grad: float | None = None
    drop_path: float = 0.0              # at E = 200, scaled by E / 200 (see drop_path_rate)
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9999
    amp: str = "off"                    # bf16 | fp16 | off
    channels_last: bool = False
    # pipeline and run
    device: str = "auto"
    threads: int | None = None
    lowpass: str = "fourier"
    seed: int = 0
    val_every: int = 1
    output: str = "runs/etpp"
    demo_classes: int = 10
    demo_train_per_class: int = 100
    demo_val_per_class: int = 25
    demo_size: int = 72
    progress: bool = True
    tensorboard: bool = False           # also log scalars for TensorBoard (needs `tensorboard`)

    def curriculum(self) -> Curriculum:
        """The schedule this config trains with."""
        try:
            if self.baseline or self.preset == "baseline":
                budget = (self.budget if self.preset == "baseline" else None) or self.baseline_budget or 300
                return Curriculum.preset("baseline", budget=budget, resolution=self.resolution,
                                         baseline_budget=budget)
            return Curriculum.resolve(self.preset, family=self.family, budget=self.budget,
                                      resolution=self.resolution, replay=self.replay,
                                      baseline_budget=self.baseline_budget)
        except ScheduleError as exc:
            raise RecipeError(str(exc)) from None

    def learning_rate(self, world_batch: int) -> float:
        """``lr`` if given, else ``base_lr`` scaled linearly from ``lr_base_batch`` to ``world_batch``."""
        return self.lr if self.lr is not None else self.base_lr * world_batch / self.lr_base_batch

    def drop_path_rate(self, curriculum: Curriculum) -> float:
        """The drop-path rate of a run on ``curriculum``: ``drop_path`` x E / 200 for the etpp and
        et presets (by the schedule's kind, not its name), ``drop_path`` as given otherwise."""
        if curriculum.kind in _DROP_PATH_SCALED_KINDS:
            return self.drop_path * curriculum.budget / DROP_PATH_REFERENCE_BUDGET
        return self.drop_path

    def validate(self) -> None:
        """Raise :class:`RecipeError` naming the flag of the first setting that cannot be used."""
        if self.amp not in ("bf16", "fp16", "off"):
            raise RecipeError(f"--amp {self.amp!r} is unknown; use bf16, fp16 or off")
        if self.batch_size < 1:
            raise RecipeError(f"--batch-size {self.batch_size} must be >= 1")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise RecipeError(f"--val-split {self.val_split} must be between 0 and 1")
        if self.val_every < 1:
            raise RecipeError(f"--val-every {self.val_every} must be >= 1")
        for key in ("mixup", "cutmix", "smoothing", "drop_path", "weight_decay"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key} = {getattr(self, key)} must be >= 0")
        if self.lr is not None and self.lr <= 0:
            raise RecipeError(f"--lr {self.lr} must be > 0")


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_SCHEDULE_KEYS = {"preset", "family", "budget", "resolution", "replay", "baseline_budget"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into TrainConfig keys, rejecting unknown keys.

    A ``schedule:`` section may hold preset/family/budget/resolution/replay/baseline_budget, or a
    whole inline schedule (``stages:``), which is then read from the recipe as a schedule file.
    """
    path = Path(path)
    data = _read_yaml_mapping(path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "schedule":
            out.update(_schedule_section(path, value))
        elif key in _FIELDS:
            out[key] = value
        else:
            raise RecipeError(f"{path}: unknown key {key!r}; known keys are the TrainConfig fields "
                              f"(e.g. model, batch_size, lr, schedule)")
    out.setdefault("name", path.stem)
    return out


def _read_yaml_mapping(path: Path) -> Mapping[str, Any]:
    import yaml  # a dependency of the package; imported here so the CLI starts fast

    if not path.is_file():
        raise RecipeError(f"--recipe {path}: no such file; see pipelines/ for the recipes")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: the top level must be a mapping of settings")
    return data


def _schedule_section(path: Path, section: Any) -> dict[str, Any]:
    """TrainConfig keys from a recipe's ``schedule:`` section."""
    if not isinstance(section, Mapping):
        raise RecipeError(f"{path}: schedule must be a mapping")
    if "stages" in section:
        return {"preset": str(path)}  # Curriculum.from_file reads the recipe's schedule section
    for key in section:
        if key not in _SCHEDULE_KEYS:
            raise RecipeError(f"{path}: unknown key schedule.{key!r}; known: {', '.join(sorted(_SCHEDULE_KEYS))}")
    return dict(section)
