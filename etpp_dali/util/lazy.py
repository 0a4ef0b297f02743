"""Lazy exports for a package's ``__init__``: a name loads its module on first use, so importing a
wing (or one light module inside it) does not import torch or DALI through its neighbours."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any],
                                                                    Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, where ``exports`` maps each
    public name to the submodule (relative to ``package``) that defines it."""
    names = sorted(exports)

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(importlib.import_module(package), name, value)  # later lookups skip this function
        return value

    return names, getattr_, lambda: names
