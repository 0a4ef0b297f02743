"""A run's settings: :class:`TrainConfig`, the recipe files that fill it, and their checks.

A recipe (``pipelines/*.yaml``, shipped as the package data ``etpp_dali.recipes``) sets
TrainConfig keys. :func:`find_recipe` finds one by path or name, :func:`load_recipe` reads it, and
:func:`merge_recipe` lays command-line flags over it: the one rule of ``etpp train``, ``etpp
search`` and ``etpp bench train`` alike. This module imports neither torch nor DALI, so recipes
can be read and checked anywhere.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from etpp_dali.curriculum.batching import AUTO, BatchError, global_batch_size, resolve_stage_batches
from etpp_dali.curriculum.patches import mae_curriculum, patch_curriculum
from etpp_dali.curriculum.presets import PRESETS
from etpp_dali.curriculum.schedule import Curriculum, ScheduleError

__all__ = ["DEFAULT_RECIPE", "DROP_PATH_REFERENCE_BUDGET", "ECHO_KINDS", "MAE_TARGETS", "TASKS", "RecipeError",
           "TrainConfig", "find_recipe", "is_schedule_file", "load_recipe", "merge_recipe", "recipe_dirs"]

# The reference recipes give drop-path at E = 200 and scale it by E / 200 with the budget of
# their curricula (the etpp and et presets); a baseline or a schedule file keeps the rate given.
DROP_PATH_REFERENCE_BUDGET = 200.0
_DROP_PATH_SCALED_KINDS = ("etpp", "et")
ECHO_KINDS = ("augment", "tensor")  # a decoded image augmented anew at each use, or replayed identical
_ECHO_POLICIES = ("auto", "off")
TASKS = ("classify", "mae")  # supervised training, or masked-autoencoder pre-training (etpp_dali.train.mae)
MAE_TARGETS = ("pixels", "hog")  # per-patch normalised pixels, or HOG features (etpp_dali.ops.hog)
_PATCH_IN_NAME = re.compile(r"patch(\d+)")


class RecipeError(ValueError):
    """A recipe or option that cannot be used; the message names the key or flag."""


@dataclass
class TrainConfig:
    """Every setting of a run. Recipes (YAML) set these keys; command-line flags override them."""

    name: str = "run"
    data: str | None = "demo"          # a data set path, "demo" for the embedded demo set
    val_split: float | None = None     # hold out this fraction of train when there is no val/
    trust_data: bool = False           # index new files from their headers only (no end-of-file check)
    model: str = "resnet10t"
    # schedule: a preset (etpp, et, baseline) or a schedule file, with its knobs
    preset: str = "etpp"
    family: str = "resnet"
    budget: float | None = None
    resolution: int = 224
    replay: bool = False
    baseline: bool = False              # train without the curriculum: full size, m = 9
    baseline_budget: float | None = None  # epochs of the baseline (default: the schedule's)
    # batches (see etpp_dali.curriculum.batching)
    batch_size: int = 256               # per-device batch at full resolution
    global_batch: int | None = None     # images per optimiser step over all devices (default: batch_size x world)
    stage_batch: str | list[int] | None = None  # "auto", one per-device batch a stage, or the schedule's
    stage_batch_cap: int | None = None  # the most a stage's per-device batch may be (auto)
    # echo: reuse of decoded images in a stage (the schedule's replay factor r by default)
    echo: str | int | None = None       # auto (measured), off (r = 1), N (r = N in every stage), or the schedule's
    echo_kind: str = "augment"          # augment: each use augmented anew; tensor: identical replay
    echo_max: int = 4                   # the largest factor auto may pick
    echo_buffer_mb: float | None = None  # the decoded-image buffer's bound (default: the loader's)
    reprob: float = 0.0                 # random-erasing probability per sample
    # optimisation
    lr: float | None = None             # absolute lr; default: base_lr * global batch / lr_base_batch
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
    # task: classify, or mae (pre-training; see etpp_dali.train.mae) and fine-tuning from it
    task: str = "classify"
    patch_size: int | None = None       # a ViT's patch (default: the model name's patchN); bands are multiples of it
    mask_ratio: float = 0.75
    mae_target: str = "pixels"          # pixels (norm_pix_loss) or hog
    norm_pix_loss: bool = True
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    knn_k: int = 20                     # neighbours of the k-NN monitor (evaluated every val_every epochs)
    init_from: str | None = None        # a checkpoint of this project whose encoder a classify run starts from
    linear_probe: bool = False          # with init_from: train the head only

    def curriculum(self, world: int = 1) -> Curriculum:
        """The schedule this config trains with on ``world`` devices, each stage with its
        per-device batch. A baseline run (``baseline``) has one full-resolution stage, so a
        ``stage_batch`` list, written for the curriculum's stages, does not apply to it."""
        try:
            if self.baseline or self.preset == "baseline":
                budget = (self.budget if self.preset == "baseline" else None) or self.baseline_budget or 300
                cur = Curriculum.preset("baseline", budget=budget, resolution=self.resolution, baseline_budget=budget)
            else:
                cur = Curriculum.resolve(self.preset, family=self.family, budget=self.budget,
                                         resolution=self.resolution, replay=self.replay,
                                         baseline_budget=self.baseline_budget)
            cur = self._on_patch_grid(cur)
            rule = None if self.baseline and isinstance(self.stage_batch, list) else self.stage_batch
            return resolve_stage_batches(cur, batch_size=self.batch_size, global_batch=self.global_batch, world=world,
                                         stage_batch=rule, cap=self.stage_batch_cap)
        except (ScheduleError, BatchError) as exc:
            raise RecipeError(str(exc)) from None

    def _on_patch_grid(self, cur: Curriculum) -> Curriculum:
        """MAE's schedule (bands on the patch grid, no RandAugment); a classify run with a
        ``patch_size`` (a ViT fine-tuned from MAE) gets the bands on the grid only."""
        if self.task == "mae":
            return mae_curriculum(cur, self.vit_patch())
        return patch_curriculum(cur, self.patch_size) if self.patch_size else cur

    def vit_patch(self) -> int:
        """The patch size of the ViT of an MAE run: ``patch_size``, else the model name's ``patchN``."""
        if self.patch_size:
            return self.patch_size
        found = _PATCH_IN_NAME.search(self.model)
        if not found:
            raise RecipeError(f"task mae pre-trains a ViT, and --model {self.model} is not one (no patch size in its "
                              "name: a convnet cannot be masked patch by patch); use e.g. vit_tiny_patch16_224")
        return int(found.group(1))

    def global_batch_size(self, world: int) -> int:
        """Images per optimiser step over ``world`` devices: ``global_batch``, else ``batch_size x world``."""
        return global_batch_size(self.batch_size, self.global_batch, world)

    def learning_rate(self, world_batch: int) -> float:
        """``lr`` if given, else ``base_lr`` scaled linearly from ``lr_base_batch`` to ``world_batch``
        (the global batch)."""
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
        for flag, value in (("--batch-size", self.batch_size), ("--global-batch", self.global_batch),
                            ("stage_batch_cap", self.stage_batch_cap)):
            if value is not None and (not _is_int(value) or value < 1):
                raise RecipeError(f"{flag} {value!r} must be an integer >= 1")
        if self.stage_batch is not None and self.stage_batch != AUTO and not isinstance(self.stage_batch, list):
            raise RecipeError(f"--stage-batch {self.stage_batch!r}: use auto or a list of per-device batches, "
                              "one a stage")
        self._validate_echo()
        self._validate_task()
        if not 0.0 <= self.reprob <= 1.0:
            raise RecipeError(f"reprob = {self.reprob} must be between 0 and 1 (the chance a sample is erased)")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise RecipeError(f"--val-split {self.val_split} must be between 0 and 1")
        if self.val_every < 1:
            raise RecipeError(f"--val-every {self.val_every} must be >= 1")
        for key in ("mixup", "cutmix", "smoothing", "drop_path", "weight_decay"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key} = {getattr(self, key)} must be >= 0")
        if self.lr is not None and self.lr <= 0:
            raise RecipeError(f"--lr {self.lr} must be > 0")

    def _validate_echo(self) -> None:
        if self.echo_kind not in ECHO_KINDS:
            raise RecipeError(f"echo_kind = {self.echo_kind!r} is unknown; use {' or '.join(ECHO_KINDS)}")
        echo = self.echo
        if echo is not None and echo not in _ECHO_POLICIES and (not _is_int(echo) or echo < 1):
            raise RecipeError(f"--echo {echo!r} is invalid; use auto, off or a whole factor N >= 1")
        if self.echo_kind == "tensor" and echo not in (None, "off"):
            raise RecipeError(f"--echo {echo} sets the factor of echo_kind augment, but echo_kind tensor replays at "
                              "the schedule's factors: drop one of the two")
        if not _is_int(self.echo_max) or self.echo_max < 1:
            raise RecipeError(f"echo_max = {self.echo_max!r} must be an integer >= 1")
        if self.echo_buffer_mb is not None and not self.echo_buffer_mb > 0:
            raise RecipeError(f"echo_buffer_mb = {self.echo_buffer_mb!r} must be > 0 (megabytes)")

    def _validate_task(self) -> None:
        if self.task not in TASKS:
            raise RecipeError(f"task = {self.task!r} is unknown; use {' or '.join(TASKS)}")
        if self.patch_size is not None and (not _is_int(self.patch_size) or self.patch_size < 1):
            raise RecipeError(f"patch_size = {self.patch_size!r} must be an integer >= 1")
        if self.linear_probe and not self.init_from:
            raise RecipeError("--linear-probe trains a head on a pre-trained encoder: give --init-from RUN/last.pt")
        if self.task != "mae":
            return
        if self.init_from:
            raise RecipeError("--init-from starts a classify run from a checkpoint; task mae pre-trains from scratch")
        if not 0.0 < self.mask_ratio < 1.0:
            raise RecipeError(f"mask_ratio = {self.mask_ratio} must be between 0 and 1 (MAE: 0.75)")
        if self.mae_target not in MAE_TARGETS:
            raise RecipeError(f"mae_target = {self.mae_target!r} is unknown; use {' or '.join(MAE_TARGETS)}")
        if self.mixup or self.cutmix:
            raise RecipeError("task mae reconstructs each image: mixup and cutmix do not apply; set them to 0")
        if self.knn_k < 1:
            raise RecipeError(f"knn_k = {self.knn_k} must be >= 1")

    def loader_echo(self) -> str | int:
        """The loader's ``echo`` argument: the factor policy (``auto``, ``off``, N) when one is
        set, else the kind (``augment``, ``tensor``) with the schedule's replay factors."""
        return self.echo if self.echo is not None else self.echo_kind


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEFAULT_RECIPE = "demo"  # what a command trains when given neither --recipe nor --data
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_SCHEDULE_KEYS = {"preset", "family", "budget", "resolution", "replay", "baseline_budget"}
_CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout this package sits in, if any


def recipe_dirs() -> list[Path]:
    """Where named recipes live: a source checkout's pipelines/ (so an editable install or a
    PYTHONPATH run reads the files being edited), then the copy installed with the package
    (``etpp_dali.recipes``, package data of a wheel)."""
    dirs = []
    if (_CHECKOUT / "setup.cfg").is_file() and (_CHECKOUT / "pipelines").is_dir():
        dirs.append(_CHECKOUT / "pipelines")
    try:
        installed = resources.files("etpp_dali.recipes")
    except ModuleNotFoundError:  # a checkout run straight from its folder
        installed = None
    if isinstance(installed, Path) and installed.is_dir() and installed.resolve() not in dirs:
        dirs.append(installed.resolve())
    return dirs


def find_recipe(name: str) -> Path:
    """A recipe file: ``name`` as a path, else a named recipe (``demo`` or ``demo.yaml``).
    Raises :class:`RecipeError` listing the installed recipes when there is neither."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in recipe_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")})
    raise RecipeError(f"--recipe {name!r}: no such file or recipe; installed recipes: "
                      f"{', '.join(known) or 'none found'} (or give a recipe file's path)")


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
        elif key == "echo" and value is False:
            out[key] = "off"  # YAML reads a bare `off` as false
        elif key in _FIELDS:
            out[key] = value
        else:
            raise RecipeError(f"{path}: unknown key {key!r}; known keys are the TrainConfig fields "
                              f"(e.g. model, batch_size, lr, schedule)")
    out.setdefault("name", path.stem)
    return out


def merge_recipe(recipe: str | Path | None, flags: Mapping[str, Any]) -> TrainConfig:
    """The settings of a run from a recipe and the flags of a command, by one rule:

    1. The base is ``recipe`` (a path or a name, see :func:`find_recipe`). Without one it is the
       demo recipe, unless the flags give ``data``: then TrainConfig's defaults, and the run is
       named after the data folder (a demo recipe's settings would not fit another data set).
    2. A schedule file given as the ``preset`` flag keeps its own budget: the recipe's budget
       belongs to the recipe's preset, so it is dropped unless the flags give ``budget`` too.
    3. Every flag that is not None overrides the recipe's key of the same name (the flags are
       named as the TrainConfig fields); None means "not given".
    4. ``output`` defaults to ``runs/<name>``.

    The result is checked (:meth:`TrainConfig.validate`); an unknown key or a bad value raises
    :class:`RecipeError` naming it.
    """
    given = {key: value for key, value in flags.items() if value is not None}
    if recipe is None and given.get("data"):
        values: dict[str, Any] = {"name": Path(given["data"]).name or "run"}
    else:
        values = load_recipe(find_recipe(str(recipe or DEFAULT_RECIPE)))
    if is_schedule_file(given.get("preset")) and "budget" not in given:
        values.pop("budget", None)
    values.update(given)
    values.setdefault("output", str(Path("runs") / values.get("name", "run")))
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise RecipeError(f"bad setting: {', '.join(unknown)} is not a TrainConfig field")
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def is_schedule_file(preset: str | None) -> bool:
    """Whether ``preset`` names a schedule file rather than a preset."""
    return preset is not None and preset not in PRESETS and Path(preset).is_file()


def _read_yaml_mapping(path: Path) -> Mapping[str, Any]:
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
