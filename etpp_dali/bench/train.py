"""Time to accuracy: EfficientTrain++ against the full-resolution baseline, with the same trainer,
data, seed and evaluation schedule, one run after the other.

Wall-clock here is the trainer's training time (the epochs' loops); evaluation, checkpoints and
set-up are reported apart, so a denser evaluation schedule does not blur the speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

from etpp_dali.train.trainer import train

__all__ = ["bench_train", "time_to"]


def time_to(history: Sequence[dict[str, Any]], top1: float) -> float | None:
    """Training seconds at the first evaluation reaching ``top1`` (None if never)."""
    for row in history:
        if row.get("top1") is not None and row["top1"] >= top1:
            return row["time"]
    return None


def _history(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's per-epoch rows, from the metrics log the trainer writes into its folder."""
    path = Path(summary["output"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_row(name: str, summary: dict[str, Any], history: list[dict[str, Any]], total_s: float) -> dict[str, Any]:
    evals = [r["eval_s"] for r in history if r.get("eval_s") is not None]
    return {
        "run": name, "schedule": summary["schedule"], "epochs": summary["epochs_done"],
        "train_s": summary["wall_s"], "eval_s": round(sum(evals), 1) if evals else None,
        "outside_training_s": round(total_s - summary["wall_s"], 1),
        "images_seen": sum(r["images"] for r in history), "top1": summary["top1"], "top5": summary["top5"],
        "relative_compute": summary["relative_compute"],
        "stages": [{"stage": st["stage"], "band": st["band"], "magnitude": st["magnitude"], "echo": st.get("echo"),
                    "images_per_s": st["images_per_s"], "loader_share": st["stall_fraction"]}
                   for st in summary["stages"] if st["done"]],
    }


def bench_train(base: Any, output: str | Path, *, val_every: int = 1) -> dict[str, Any]:
    """Train ``base`` (a :class:`~etpp_dali.train.trainer.TrainConfig`) with its ET++ schedule, then as
    the baseline, into ``output/etpp`` and ``output/baseline``; evaluate both every ``val_every``
    epochs. Returns per run the top-1 curve against training wall-clock, the stages' images/sec
    and loader share of the step time, and the speed-ups (wall-clock, compute, time to the
    baseline's final top-1)."""
    runs: dict[str, dict[str, Any]] = {}
    for name, overrides in (("etpp", {}), ("baseline", {"baseline": True})):
        cfg = dataclasses.replace(base, output=str(Path(output) / name), val_every=val_every, **overrides)
        t0 = time.perf_counter()
        summary = train(cfg)
        history = _history(summary)
        runs[name] = {"row": _run_row(name, summary, history, time.perf_counter() - t0), "history": history}
    et, base_run = runs["etpp"], runs["baseline"]
    target = base_run["row"]["top1"]
    for run in runs.values():
        run["row"]["time_to_baseline_top1_s"] = time_to(run["history"], target) if target is not None else None
    reach, base_reach = et["row"]["time_to_baseline_top1_s"], base_run["row"]["time_to_baseline_top1_s"]
    return {
        "runs": [et["row"], base_run["row"]],
        "baseline_final_top1": target,
        "wall_speedup": _ratio(base_run["row"]["train_s"], et["row"]["train_s"]),
        "compute_speedup": _ratio(base_run["row"]["relative_compute"], et["row"]["relative_compute"]),
        "time_to_accuracy_speedup": _ratio(base_reach, reach),
        "curves": {name: [(round(r["time"] / 60, 4), r["top1"]) for r in run["history"] if r.get("top1") is not None]
                   for name, run in runs.items()},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
