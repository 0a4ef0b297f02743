"""What every benchmark shares: the machine record, the median rate of a step, Markdown tables
and the JSON writer.

The benchmarks: the Fourier crop alone and inside a DALI pipeline (:mod:`etpp_dali.bench.crop`),
the loaders, each alone in its own process (:mod:`etpp_dali.bench.loader`), and time to accuracy
(:mod:`etpp_dali.bench.train`). This module imports neither torch nor DALI (the loader
benchmark's parent process writes its results with it); the machine record reads the versions
of whichever of them are installed.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

from etpp_dali.util.files import write_text_atomic

__all__ = ["machine_info", "median_rate", "write_results", "peak_rss_mb", "markdown_table"]

_REPORTED_PACKAGES = ("torch", "torchvision", "timm", "numpy", "PIL", "nvidia.dali")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU and package versions: stored with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
                            "platform": platform.platform(), "gpu": None}
    modules = {name: _installed(name) for name in _REPORTED_PACKAGES}
    for name, module in modules.items():
        info[name.replace("nvidia.", "")] = None if module is None else getattr(module, "__version__", "?")
    torch = modules["torch"]
    try:
        if torch is not None and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA set-up leaves the record without a GPU, not without results
        pass
    return info


def _installed(name: str) -> ModuleType | None:
    """The package ``name`` when this environment has one that imports (the record names the
    versions that made the figures, whichever are present)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    VmHWM from /proc, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so
    a child started from a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_rate(step: Callable[[], int], *, warmup: int, windows: int, steps_per_window: int,
                sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Run ``step`` (returns images done); images/sec per window, median and spread."""
    for _ in range(warmup):
        step()
    if sync:
        sync()
    rates = []
    for _ in range(windows):
        t0, images = time.perf_counter(), 0
        for _ in range(steps_per_window):
            images += step()
        if sync:
            sync()
        rates.append(images / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


# ------------------------------------------------------------------------------- outputs
def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def write_results(doc: dict[str, Any], path: str | Path | None) -> str:
    """JSON text of ``doc`` (with the machine), written atomically to ``path`` when given."""
    doc = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **doc}
    text = json.dumps(doc, indent=2)
    if path:
        write_text_atomic(path, text + "\n")
    return text
