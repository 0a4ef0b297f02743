"""``etpp search`` as one call: the proxy data, the budget, the printed proxy cost, the search
with the trainer-backed proxy, and the files it writes (:func:`run_search`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from etpp_dali.curriculum.schedule_file import BASELINE_BUDGET, DEFAULT_BUDGET
from etpp_dali.search.budget import Budget, ComputeBudget
from etpp_dali.search.proxy import (
    ProxyData,
    TrainerProxy,
    check_seeds,
    describe_subset,
    plan_proxy_data,
    training_settings,
)
from etpp_dali.search.report import plot_search, schedule_bands, schedule_yaml, trial_line, trial_rows, trials_table
from etpp_dali.search.sequential import SearchResult, sequential_search
from etpp_dali.search.space import SearchError, SearchSpace, max_proxy_runs
from etpp_dali.search.wallclock import measured_budget
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.data import data_root
from etpp_dali.util.files import write_text_atomic

__all__ = ["run_search"]


def run_search(cfg: TrainConfig, space: SearchSpace, *, output: str | Path, budget: float | None = None,
               wall_clock_budget: float | None = None, proxy_fraction: float = 0.5, proxy_seeds: int = 2,
               dry_run: bool = False, train_args: Sequence[str] = (),
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """``etpp search``: print the proxy cost, then (unless ``dry_run``) search with the
    trainer-backed proxy and write ``schedule.yaml``, ``trials.md``, ``search.png`` and
    ``search.json`` under ``output``. ``cfg`` holds the training settings (a recipe and flags);
    ``train_args`` are the ``etpp train`` flags that give the same settings (for the printed
    command). Running it again with the same settings resumes from the cached runs."""
    if budget is not None and wall_clock_budget is not None:
        raise SearchError("--budget and --wall-clock-budget exclude each other; give one")
    check_seeds(proxy_seeds)  # before anything is measured or written
    out = Path(output)
    root = data_root(cfg)
    data = plan_proxy_data(root, out, fraction=proxy_fraction, seed=cfg.seed, val_split=cfg.val_split)
    settings = _settings(cfg, space, budget, wall_clock_budget, proxy_fraction, proxy_seeds, data.fingerprint)
    _check_output(out, settings)
    chosen = _budget(cfg, space, budget, wall_clock_budget, data=data, root=root, out=out, log=log)
    if chosen.build((space.resolution,) * space.stages, space) is None:
        raise SearchError(chosen.shortfall(space))
    proxy = TrainerProxy(cfg, data, out / "runs", seeds=proxy_seeds, on_start=lambda schedule, resumed: log(
        f"  {'resuming' if resumed else 'training'} the proxy of bands {schedule_bands(schedule)} ..."))
    plan = _plan(space, chosen, proxy_fraction, proxy_seeds, proxy.cached_runs())
    log(chosen.describe(space))
    log(describe_subset(data, proxy_fraction))
    log(plan["text"])
    if dry_run:
        return {"dry_run": True, "plan": plan}
    write_text_atomic(out / "search.json", json.dumps({"settings": settings, "status": "running"}, indent=2) + "\n")
    result = sequential_search(space, chosen, proxy, on_trial=lambda t: log(trial_line(t, proxy.last_seconds)))
    return _write_outputs(out, result, cfg, chosen, settings, plan, proxy_fraction, train_args)


def _settings(cfg: TrainConfig, space: SearchSpace, budget: float | None, wall_clock_budget: float | None,
              fraction: float, seeds: int, data_fingerprint: str) -> dict[str, Any]:
    """Everything that determines the search, as JSON (what an output folder is claimed with)."""
    spend = {"wall_clock_s": wall_clock_budget} if wall_clock_budget is not None else {
        "epochs": _compute_budget(cfg, budget)}
    doc = {"train": training_settings(cfg), "data": data_fingerprint, "space": asdict(space),
           "proxy_fraction": fraction, "proxy_seeds": seeds, "budget": spend, "baseline_budget": cfg.baseline_budget}
    return json.loads(json.dumps(doc))


def _check_output(out: Path, settings: Mapping[str, Any]) -> None:
    """Refuse an output folder that holds a search with other settings (never overwrite it)."""
    try:
        held = json.loads((out / "search.json").read_text()).get("settings")
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise SearchError(f"--output {out}: search.json is unreadable ({exc}); choose another --output") from None
    if held != settings:
        differ = sorted(k for k in set(held or {}) | set(settings) if (held or {}).get(k) != settings.get(k))
        raise SearchError(f"--output {out} holds a search with other settings ({', '.join(differ)}); choose another "
                          "--output, or give the same flags to resume it")


def _budget(cfg: TrainConfig, space: SearchSpace, budget: float | None, wall_clock_budget: float | None, *,
            data: ProxyData, root: Path, out: Path, log: Callable[[str], None]) -> Budget:
    baseline = cfg.baseline_budget or BASELINE_BUDGET
    if wall_clock_budget is None:
        return ComputeBudget(_compute_budget(cfg, budget), baseline_budget=baseline)
    return measured_budget(cfg, space, wall_clock_budget, data=data, root=root, out=out, baseline_budget=baseline,
                           log=log)


def _compute_budget(cfg: TrainConfig, budget: float | None) -> float:
    """--budget, else the recipe's budget, else EfficientTrain++'s E = 200."""
    return budget if budget is not None else cfg.budget or DEFAULT_BUDGET


def _plan(space: SearchSpace, budget: Budget, fraction: float, seeds: int, cached: int) -> dict[str, Any]:
    """What the proxy runs cost at most: printed before any of them starts."""
    schedules = max_proxy_runs(space)
    runs = schedules * seeds
    per_run = fraction * budget.total
    text = (f"proxy cost: at most {runs} proxy runs ({schedules} schedules x {seeds} seed(s); {cached} "
            f"already done in this folder), each about {fraction:g} x {budget.total:g} = {per_run:.3g} "
            f"{budget.unit}; at most {runs * per_run:.3g} {budget.unit} in all, {runs * fraction:.3g} times one full "
            "training run of the budget")
    return {"max_runs": runs, "per_run": per_run, "total": runs * per_run, "unit": budget.unit,
            "cached_runs": cached, "seeds": seeds, "text": text}


def _write_outputs(out: Path, result: SearchResult, cfg: TrainConfig, budget: Budget,
                   settings: Mapping[str, Any], plan: Mapping[str, Any], fraction: float,
                   train_args: Sequence[str]) -> dict[str, Any]:
    rows = trial_rows(result.trials, fraction)
    table = trials_table(rows)
    schedule = result.schedule
    schedule_path = out / "schedule.yaml"
    command = " ".join(["etpp", "train", *train_args, "--preset", str(schedule_path)])
    comment = [f"written by etpp search: {cfg.model}, bands {schedule_bands(schedule)}",
               f"proxy top-1 {result.top1:.2f}% (all stages at {schedule.resolution}: {result.reference_top1:.2f}%)",
               f"train it: {command}"]
    write_text_atomic(schedule_path, schedule_yaml(schedule, comment))
    write_text_atomic(out / "trials.md", table + "\n")
    png = plot_search(rows, out / "search.png", unit=budget.unit,
                      title=f"{cfg.model}, search at {budget.flag} {budget.total:g}: bands {schedule_bands(schedule)}")
    doc = {"settings": settings, "status": "done", "plan": dict(plan), "bands": list(result.bands),
           "top1": result.top1, "reference_top1": result.reference_top1, "trials": rows,
           "schedule": schedule.summary(), "command": command}
    write_text_atomic(out / "search.json", json.dumps(doc, indent=2) + "\n")
    return {**doc, "table": table, "schedule_file": str(schedule_path), "plot": str(png),
            "trials_file": str(out / "trials.md")}
