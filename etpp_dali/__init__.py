"""etpp-dali: EfficientTrain++ curriculum training on an NVIDIA DALI data pipeline.

The package is split into wings, one concern each; data flows one way, from the source to the
trainer (source -> plan -> graph -> loader -> trainer):

- :mod:`etpp_dali.curriculum`: the schedules (torch-free): presets, schedule files, stage batches.
- :mod:`etpp_dali.ops`: the Fourier crop, RandAugment's table and draws, the DALI operators,
  random erasing.
- :mod:`etpp_dali.data`: scanning and validating sources (ImageFolder, file list, shards) and the
  embedded demo set.
- :mod:`etpp_dali.loader`: the curriculum and validation loaders: plans, DALI graphs, the runner,
  echo and replay, the DALI-style iterator.
- :mod:`etpp_dali.train`: the run's settings, the trainer, models, optimisation, checkpoints,
  processes, evaluation, the summary, the speed-up measurement.
- :mod:`etpp_dali.search`: the schedule search (a pure core and the proxy training).
- :mod:`etpp_dali.bench`: the benchmarks and the loaders they compare against.
- :mod:`etpp_dali.util`: atomic files, thread maps, figures (imported by every wing, imports none).
- :mod:`etpp_dali.cli`: the ``etpp`` command; each command parses flags and calls one function.

The names below load their module on first use, so ``import etpp_dali`` (and the
``etpp schedule`` command) stays free of torch and DALI. The flat module paths of earlier
releases (``etpp_dali.dali_ops``, ``etpp_dali.measure``, ...) still import, as aliases of their
new homes (:data:`MOVED_MODULES`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "Curriculum": "curriculum",
    "SchedulePosition": "curriculum",
    "ScheduleError": "curriculum",
    "Stage": "curriculum",
    "StageSpec": "curriculum",
    "FourierCropper": "ops.fourier",
    "fourier_crop": "ops.fourier",
    "CurriculumLoader": "loader",
    "ValidationLoader": "loader",
    "LoaderSettings": "loader",
}

# Where each module of the flat layout (0.1) lives now; the old path imports the new module.
MOVED_MODULES = {
    "batching": "curriculum.batching", "presets": "curriculum.presets", "schedule_file": "curriculum.schedule_file",
    "fourier": "ops.fourier", "randaugment": "ops.randaugment", "dali_ops": "ops.dali_ops", "erasing": "ops.erasing",
    "sources": "data.sources", "files": "util.files", "parallel": "util.threads", "plots": "util.plots",
    "pipeline": "loader.graphs", "plans": "loader.plans", "dali_run": "loader.runner",
    "dali_iterator": "loader.dali_iterator", "echo": "loader.echo.schedule", "echo_auto": "loader.echo.auto",
    "echo_run": "loader.echo.stages", "replay": "loader.echo.replay",
    "recipe": "train.config", "trainer": "train.trainer", "models": "train.models",
    "optimisation": "train.optimisation", "checkpoint": "train.checkpoint", "distributed": "train.distributed",
    "evaluation": "train.evaluation", "run_summary": "train.summary", "train_data": "train.data",
    "measure": "train.measure", "proxy": "search.proxy",
    "bench_loader": "bench.loader", "bench_loaders": "bench.loaders", "bench_report": "bench.report",
    "bench_train": "bench.train", "bench_window": "bench.window", "benchmark": "bench.record",
    "reference": "bench.reference", "processes": "bench.processes",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``etpp_dali.<old>`` as the module that now holds its code (one object, not a copy)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        prefix, _, old = name.partition(".")
        if prefix != __name__ or old not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec: Any) -> Any:
        new = f"{__name__}.{MOVED_MODULES[spec.name.partition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        """The module was executed under its new name already."""


if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
    sys.meta_path.append(_MovedModule())


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'etpp_dali' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
