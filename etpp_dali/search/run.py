"""``etpp search`` as one call: the proxy data, the budget, the proxy cost printed before (the
most it can be) and after (what it was, and the wall-clock), the search with the trainer-backed
proxy, and the files it writes (:func:`run_search`). Costs are given as "x one training run":
proxy compute over the budget (one full training run of the budget spends the budget)."""

from __future__ import annotations

import json
import time
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
from etpp_dali.search.space import SearchError, SearchSpace, max_proxy_runs, max_proxy_stages
from etpp_dali.search.wallclock import measured_budget
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.data import data_root
from etpp_dali.util.files import write_text_atomic

__all__ = ["run_search"]


def run_search(cfg: TrainConfig, space: SearchSpace, *, output: str | Path, budget: float | None = None,
               wall_clock_budget: float | None = None, proxy_fraction: float = 0.25, proxy_seeds: int = 2,
               score_after: int | None = 1, val_images: int | None = 1000, dry_run: bool = False,
               train_args: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """``etpp search``: print the most the proxy runs can cost, then (unless ``dry_run``) search
    with the trainer-backed proxy, each candidate continued from the accepted path and scored
    ``score_after`` stages after its own (None: at the end of the budget), on at most
    ``val_images`` validation images; print what it cost and write ``schedule.yaml``,
    ``trials.md``, ``search.png`` and ``search.json`` under ``output``. ``cfg`` holds the training
    settings (a recipe and flags); ``train_args`` are the ``etpp train`` flags that give the same
    settings (for the printed command). Running it again with the same settings resumes from the
    cached runs."""
    if budget is not None and wall_clock_budget is not None:
        raise SearchError("--budget and --wall-clock-budget exclude each other; give one")
    check_seeds(proxy_seeds)  # before anything is measured or written
    t0 = time.perf_counter()
    out = Path(output)
    root = data_root(cfg)
    data = plan_proxy_data(root, out, fraction=proxy_fraction, seed=cfg.seed, val_split=cfg.val_split,
                           val_images=val_images)
    settings = _settings(cfg, space, budget, wall_clock_budget, proxy_fraction, proxy_seeds, data.fingerprint)
    settings["score_after"] = score_after
    _check_output(out, settings)
    chosen = _budget(cfg, space, budget, wall_clock_budget, data=data, root=root, out=out, log=log)
    if chosen.build((space.resolution,) * space.stages, space) is None:
        raise SearchError(chosen.shortfall(space))
    proxy = TrainerProxy(cfg, data, out / "runs", seeds=proxy_seeds, on_start=lambda schedule, resumed: log(
        f"  {'resuming' if resumed else 'training'} the proxy of bands {schedule_bands(schedule)} ..."))
    plan = _plan(space, chosen, proxy_fraction, proxy_seeds, proxy.cached_runs(), score_after)
    log(chosen.describe(space))
    log(describe_subset(data, proxy_fraction))
    log(plan["text"])
    if dry_run:
        return {"dry_run": True, "plan": plan}
    write_text_atomic(out / "search.json", json.dumps({"settings": settings, "status": "running"}, indent=2) + "\n")
    result = sequential_search(space, chosen, proxy, score_after=score_after,
                               on_trial=lambda t: log(trial_line(t, proxy.last_seconds)),
                               on_choice=lambda path, k: proxy.keep_states(path, range(k, space.stages)))
    proxy.keep_states()  # the search is done: no state is needed any more
    cost = _cost(result, chosen, proxy_fraction, proxy_seeds, time.perf_counter() - t0)
    log(cost["text"])
    return _write_outputs(out, result, cfg, chosen, settings, {**plan, "spent": cost}, proxy_fraction, train_args)


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


def _plan(space: SearchSpace, budget: Budget, fraction: float, seeds: int, cached: int,
          score_after: int | None) -> dict[str, Any]:
    """The most the proxy runs can cost: printed before any of them starts, beside what the same
    search would cost with every proxy run from scratch to the end of the budget."""
    schedules = max_proxy_runs(space)
    runs, per_run = schedules * seeds, fraction * budget.total
    stages = max_proxy_stages(space, score_after)
    total = stages / space.stages * per_run * seeds
    scored = "at the end of the budget" if score_after is None else f"{score_after} stage(s) after its own"
    text = (f"proxy cost: at most {stages} stages x {seeds} seed(s), each stage about {fraction:g} x "
            f"{budget.total / space.stages:.3g} {budget.unit}: at most {total:.3g} {budget.unit}, "
            f"{total / budget.total:.3g} x one training run of the budget (each candidate continues from the "
            f"accepted path and is scored {scored}; from scratch to the end of the budget, at most {runs} proxy "
            f"runs ({schedules} schedules x {seeds} seed(s)), each about {fraction:g} x {budget.total:g} = "
            f"{per_run:.3g} {budget.unit}, {runs * fraction:.3g} x one training run); {cached} already done in "
            "this folder")
    return {"max_runs": runs, "per_run": per_run, "max_stages": stages, "total": total, "unit": budget.unit,
            "max_training_runs": round(total / budget.total, 4), "cached_runs": cached, "seeds": seeds,
            "score_after": score_after, "text": text}


def _cost(result: SearchResult, budget: Budget, fraction: float, seeds: int, wall_s: float) -> dict[str, Any]:
    """What the proxy runs trained (whatever this folder's cache held before), and this call's wall-clock."""
    spent = result.cost * fraction * seeds
    runs = spent / budget.total
    text = (f"search cost: {spent:.3g} {budget.unit} of proxy training, {runs:.3g} x one training run of the "
            f"budget; {wall_s:.0f} s of wall-clock in this call")
    if budget.unit == "s":
        text += f" ({wall_s / budget.total:.3g} x the --wall-clock-budget)"
    return {"proxy": round(spent, 4), "training_runs": round(runs, 4), "wall_s": round(wall_s, 1), "text": text}


def _write_outputs(out: Path, result: SearchResult, cfg: TrainConfig, budget: Budget,
                   settings: Mapping[str, Any], plan: Mapping[str, Any], fraction: float,
                   train_args: Sequence[str]) -> dict[str, Any]:
    rows = trial_rows(result.trials, fraction, int(plan["seeds"]))
    table = trials_table(rows)
    schedule = result.schedule
    schedule_path = out / "schedule.yaml"
    command = " ".join(["etpp", "train", *train_args, "--preset", str(schedule_path)])
    comment = [f"written by etpp search: {cfg.model}, bands {schedule_bands(schedule)}",
               f"proxy top-1 {result.top1:.2f}% at the end of stage {result.scored_at} (all stages at "
               f"{schedule.resolution}: {result.reference_top1:.2f}% at the end of stage {result.trials[0].scored_at})",
               f"train it: {command}"]
    write_text_atomic(schedule_path, schedule_yaml(schedule, comment))
    write_text_atomic(out / "trials.md", table + "\n")
    png = plot_search(rows, out / "search.png", unit=budget.unit,
                      title=f"{cfg.model}, search at {budget.flag} {budget.total:g}: bands {schedule_bands(schedule)}")
    doc = {"settings": settings, "status": "done", "plan": dict(plan), "bands": list(result.bands),
           "top1": result.top1, "scored_at": result.scored_at, "reference_top1": result.reference_top1, "trials": rows,
           "schedule": schedule.summary(), "command": command}
    write_text_atomic(out / "search.json", json.dumps(doc, indent=2) + "\n")
    return {**doc, "table": table, "schedule_file": str(schedule_path), "plot": str(png),
            "trials_file": str(out / "trials.md")}
