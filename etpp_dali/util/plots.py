"""PNG figures: the schedule, training curves, benchmark bars. Matplotlib with the Agg backend.

The schedule's figure reads a :class:`~etpp_dali.curriculum.schedule.Curriculum` it is given
(util imports no wing: the name is for type checkers only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt

from etpp_dali.util.files import atomic_path

if TYPE_CHECKING:
    from etpp_dali.curriculum.schedule import Curriculum


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: training machines have no display, and a
    figure is only ever written to a file."""
    matplotlib.use("Agg")
    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write atomically: a half-written PNG never replaces a good one."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def _stage_steps(curriculum: Curriculum) -> tuple[list[float], list[int], list[float]]:
    """Compute-fraction edges with the band and magnitude of each stage (for step plots)."""
    edges, bands, mags = [0.0], [], []
    total = curriculum.total_compute
    done = 0.0
    for s in curriculum.stages:
        done += s.compute
        edges.append(done / total)
        bands.append(s.band)
        mags.append(s.magnitude)
    return edges, bands, mags


def plot_schedule(curriculum: Curriculum, path: str | Path) -> Path:
    """Band and magnitude against the compute fraction, each stage labelled with its data epochs."""
    plt = pyplot()
    edges, bands, mags = _stage_steps(curriculum)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.stairs(bands, edges, color="tab:blue", linewidth=2, label="band B (px)")
    ax.set_xlabel("fraction of the compute budget")
    ax.set_ylabel("band B (px)", color="tab:blue")
    ax.set_ylim(0, curriculum.resolution * 1.15)
    ax.set_xlim(0, 1)
    for s, lo, hi in zip(curriculum.stages, edges[:-1], edges[1:]):
        ax.annotate(f"{s.epochs} ep", ((lo + hi) / 2, s.band), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax2 = ax.twinx()
    ax2.stairs(mags, edges, color="tab:orange", linewidth=2, linestyle="--", label="magnitude m")
    ax2.set_ylabel("RandAugment magnitude m", color="tab:orange")
    ax2.set_ylim(0, 11)
    ax.set_title(f"{curriculum.name}: E = {curriculum.budget:g}, R = {curriculum.resolution}, "
                 f"{curriculum.total_epochs} data epochs, {curriculum.speedup():.2f}x less compute")
    fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def plot_training(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Top-1 and loss against wall-clock time, with the band and magnitude drawn over them.

    ``records`` are the per-epoch rows of the metrics log (``time``, ``top1``, ``loss``, ``band``,
    ``magnitude``); rows without ``top1`` are epochs without evaluation. An MAE run's rows have
    the k-NN monitor's ``knn_top1`` instead, drawn in its place.
    """
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    t = [r["time"] / 60 for r in records]
    key, label = ("knn_top1", "k-NN top-1 (%)") if any("knn_top1" in r for r in records) else ("top1", "val top-1 (%)")
    evaluated = [(r["time"] / 60, r[key]) for r in records if r.get(key) is not None]
    if evaluated:
        ax_acc.plot(*zip(*evaluated), "o-", color="tab:green", label=label)
    ax_acc.set_ylabel(label)
    ax_loss.plot(t, [r["loss"] for r in records], "-", color="tab:red", label="train loss")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_xlabel("wall-clock (min)")
    band_ax = ax_acc.twinx()
    band_ax.step(t, [r["band"] for r in records], where="pre", color="tab:blue", alpha=0.5, label="band")
    band_ax.set_ylabel("band (px)", color="tab:blue")
    mag_ax = ax_loss.twinx()
    mag_ax.step(t, [r["magnitude"] for r in records], where="pre", color="tab:orange", alpha=0.5)
    mag_ax.set_ylabel("magnitude", color="tab:orange")
    if title:
        ax_acc.set_title(title)
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def plot_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], path: str | Path,
              ylabel: str, title: str = "") -> Path:
    """Grouped bars: one group per x label, one bar per series."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(groups)
    return _finish(plt, fig, ax, path, ylabel, title)


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path,
                xlabel: str, ylabel: str, title: str = "") -> Path:
    """Lines of (x, y) points, one per named run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, points in curves.items():
        if points:
            ax.plot(*zip(*points), "o-", label=name)
    ax.set_xlabel(xlabel)
    return _finish(plt, fig, ax, path, ylabel, title)


def _finish(plt: Any, fig: Any, ax: Any, path: str | Path, ylabel: str, title: str) -> Path:
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
