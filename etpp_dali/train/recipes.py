"""Recipe files and the one rule that merges a recipe with command-line flags.

A recipe (``pipelines/*.yaml``, shipped as the package data ``etpp_dali.recipes``) sets
:class:`~etpp_dali.train.config.TrainConfig` keys. :func:`find_recipe` finds one by path or name,
:func:`load_recipe` reads it, and :func:`merge_recipe` lays flags over it: the rule of
``etpp train``, ``etpp search`` and ``etpp bench train`` alike. Like the config, this module
imports neither torch nor DALI.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from etpp_dali.curriculum.presets import PRESETS
from etpp_dali.train.config import RecipeError, TrainConfig

__all__ = ["DEFAULT_RECIPE", "find_recipe", "is_schedule_file", "load_recipe", "merge_recipe", "recipe_dirs"]

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
