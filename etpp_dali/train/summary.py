"""``summary.json`` of a run: per stage its per-device batch and accumulation, the echo factor
of its last epoch done (``echo="auto"`` may raise it within a stage), wall-clock,
images/sec and loader stall; the final accuracy; compute and wall-clock against the
full-resolution baseline."""

from __future__ import annotations

from typing import Any, Sequence

from etpp_dali.curriculum.schedule import Curriculum

__all__ = ["stage_rows", "summarize"]


def stage_rows(history: Sequence[dict[str, Any]], curriculum: Curriculum) -> list[dict[str, Any]]:
    """One row per stage that has epochs: its settings and what the done epochs measured."""
    rows = []
    for s in curriculum.stages:
        if not s.epochs:
            continue
        done = [r for r in history if r["stage"] == s.index]
        t = sum(r["epoch_time"] for r in done)
        n = sum(r["images"] for r in done)
        wait = sum(r["data_wait"] * r["epoch_time"] for r in done)  # data_wait: a fraction of the epoch
        first = done[0] if done else {}
        rows.append({"stage": s.index, "band": s.band, "magnitude": s.magnitude, "epochs": s.epochs,
                     "batch": first.get("batch"), "accumulation": first.get("accumulation"),
                     "echo": done[-1].get("echo") if done else None, "done": len(done),
                     "wall_s": round(t, 1), "images_per_s": round(n / t, 1) if t else None,
                     "stall_fraction": round(wait / t, 3) if t else None})
    return rows


def summarize(history: Sequence[dict[str, Any]], curriculum: Curriculum, *, name: str, model: str,
              elapsed: float, interrupted: bool, output: str) -> dict[str, Any]:
    """The run's summary. The baseline's wall-clock is estimated from this run's full-resolution
    epochs times the baseline's epochs (when the run had any full-resolution epoch)."""
    evals = [r for r in history if "top1" in r or "knn_top1" in r]
    final = evals[-1] if evals else {}
    full_res = [r for r in history if r["band"] == curriculum.resolution]
    base_epoch_s = (sum(r["epoch_time"] for r in full_res) / len(full_res)) if full_res else None
    baseline_budget = curriculum.baseline_budget
    est_baseline_s = base_epoch_s * baseline_budget if base_epoch_s else None
    relative = curriculum.relative_compute()
    return {
        "name": name, "model": model, "schedule": curriculum.name,
        "epochs_done": len(history), "epochs": curriculum.total_epochs, "interrupted": interrupted,
        "stages": stage_rows(history, curriculum), "top1": final.get("top1"), "top5": final.get("top5"),
        "ema_top1": final.get("ema_top1"), "knn_top1": final.get("knn_top1"), "wall_s": round(elapsed, 1),
        "relative_compute": round(relative, 4), "compute_saved": round(1 - relative, 4),
        "baseline_budget": baseline_budget,
        "estimated_baseline_wall_s": round(est_baseline_s, 1) if est_baseline_s else None,
        "wall_saved": round(1 - elapsed / est_baseline_s, 4) if est_baseline_s else None,
        "output": output,
    }
