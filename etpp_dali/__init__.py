"""etpp-dali: EfficientTrain++ curriculum training on an NVIDIA DALI data pipeline.

The names below load their module on first use, so ``import etpp_dali`` (and the
``etpp schedule`` command) stays free of torch and DALI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Curriculum": "curriculum",
    "SchedulePosition": "curriculum",
    "ScheduleError": "curriculum",
    "Stage": "curriculum",
    "StageSpec": "curriculum",
    "FourierCropper": "fourier",
    "fourier_crop": "fourier",
    "CurriculumLoader": "loader",
    "ValidationLoader": "loader",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'etpp_dali' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
