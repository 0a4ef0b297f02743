"""What a search leaves behind: the schedule file, the trials as rows and a Markdown table, the
plot of proxy top-1 against the proxy cost spent, and the line printed as each trial ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.search.space import Trial
from etpp_dali.util.plots import pyplot, save_figure

__all__ = ["TABLE_COLUMNS", "plot_search", "schedule_bands", "schedule_yaml", "trial_line", "trial_rows",
           "trials_table"]

TABLE_COLUMNS = ["stage", "band", "bands", "result", "scored_at", "top1", "reference_top1", "compute", "proxy_cost",
                 "cumulative_proxy_cost"]


def schedule_yaml(schedule: Curriculum, comment: Sequence[str] = ()) -> str:
    """The schedule file ``etpp train --preset FILE`` takes, with ``comment`` lines on top."""
    head = "".join(f"# {line}\n" for line in comment)
    return head + yaml.safe_dump(schedule.to_dict(), sort_keys=False)


def schedule_bands(schedule: Curriculum) -> str:
    """The bands of ``schedule``, comma-separated."""
    return ",".join(str(s.band) for s in schedule.stages)


def trial_rows(trials: Sequence[Trial], fraction: float, seeds: int = 1) -> list[dict[str, Any]]:
    """One row a trial, with its outcome, what its proxy runs trained (``fraction`` of the
    stages it trained, times ``seeds``) and the search's cost so far, in the budget's unit."""
    rows, spent = [], 0.0
    for t in trials:
        row = t.to_dict()
        row["result"] = ("unaffordable" if t.status == "unaffordable" else "reference" if t.role == "reference"
                         else "accepted" if t.accepted else "rejected")
        if t.cost is not None:
            row["proxy_cost"] = round(fraction * seeds * t.cost, 3)
            spent += fraction * seeds * t.cost
        row["cumulative_proxy_cost"] = round(spent, 3)
        rows.append(row)
    return rows


def trials_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The trials as a Markdown table (top-1 with two decimals)."""
    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        if key in ("top1", "reference_top1"):
            return f"{value:.2f}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot_search(rows: Sequence[Mapping[str, Any]], path: str | Path, *, unit: str, title: str = "") -> Path:
    """Proxy top-1 of each run (at the end of the stage it was scored at) against the proxy cost
    the search had spent when it ended; the chosen path (the first reference, then each accepted
    candidate) joined and starred."""
    plt = pyplot()
    runs = [r for r in rows if r["status"] == "run"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([r["cumulative_proxy_cost"] for r in runs], [r["top1"] for r in runs], "o", color="tab:gray",
            label="proxy runs")
    for r in runs:
        ax.annotate(f"s{r['stage']} B{r['band']}", (r["cumulative_proxy_cost"], r["top1"]),
                    textcoords="offset points", xytext=(3, 4), fontsize=7)
    path_rows = runs[:1] + [r for r in runs if r["accepted"]]
    ax.plot([r["cumulative_proxy_cost"] for r in path_rows], [r["top1"] for r in path_rows], "*-",
            color="tab:red", markersize=11, label="chosen path")
    if runs:
        where = f" (end of stage {runs[0]['scored_at']})" if runs[0].get("scored_at") is not None else ""
        ax.axhline(runs[0]["top1"], color="tab:blue", linestyle="--", linewidth=1,
                   label=f"all at full resolution{where}")
    ax.set_xlabel(f"proxy cost spent by the search ({unit})")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def trial_line(trial: Trial, seconds: float) -> str:
    """What the search prints as ``trial`` ends (``seconds``: its proxy runs' wall-clock)."""
    where = f"stage {trial.stage} {trial.role} B = {trial.band}"
    if trial.status == "unaffordable":
        return f"{where}: skipped, the budget cannot afford it"
    where += f" (scored at the end of stage {trial.scored_at})"
    if trial.role == "reference":
        return f"{where}: proxy top-1 {trial.top1:.2f}% ({seconds:.0f} s)"
    verdict = "accepted" if trial.accepted else "rejected"
    return (f"{where}: proxy top-1 {trial.top1:.2f}% against {trial.reference_top1:.2f}%: {verdict} "
            f"({seconds:.0f} s)")
