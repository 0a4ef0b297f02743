"""MAE pre-training with the curriculum against plain MAE, then a short fine-tune of each.

For every seed, three pre-trainings with the same recipe, trainer, data and k-NN monitor:

- ``etpp``: the recipe's ET++ schedule at budget E (full-resolution epochs of compute);
- ``baseline``: every epoch at full resolution, E epochs: the same compute;
- ``baseline_<r>x``: the same at r x E epochs (r = 1.5 by default): what ET++ would save.

Each pre-trained encoder is then fine-tuned with the supervised recipe (``--init-from``), and a
classifier trained from scratch with the same fine-tuning settings shows what pre-training adds
at all. The figures: pre-training wall-clock (the epochs' loops, evaluation excluded) and the
load average of the machine around it, compute in full-resolution epochs and relative to ET++,
the final k-NN top-1, and the fine-tuned top-1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from etpp_dali.bench.record import markdown_table
from etpp_dali.train.config import TrainConfig, merge_recipe
from etpp_dali.train.finetune import checkpoint_architecture
from etpp_dali.train.trainer import train

__all__ = ["MAE_RUN_COLUMNS", "bench_mae", "mae_tables", "pretrain_runs"]

MAE_RUN_COLUMNS = ["run", "seed", "schedule", "epochs", "compute", "relative_compute", "pretrain_s", "load",
                   "knn_top1", "finetune_top1"]


# what the fine-tuning takes from the MAE recipe: the same data (and demo set)
_DATA_KEYS = ("data", "val_split", "demo_classes", "demo_train_per_class", "demo_val_per_class", "demo_size")


def pretrain_runs(budget: float, ratio: float) -> list[tuple[str, dict[str, Any]]]:
    """The pre-trainings compared, by name, with the settings each changes."""
    return [("etpp", {"budget": budget}), ("baseline", {"preset": "baseline", "budget": budget}),
            (f"baseline_{ratio:g}x", {"preset": "baseline", "budget": budget * ratio})]


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _finetune(init: Path | None, base: TrainConfig, seed: int, recipe: str, budget: float, output: Path,
              model: dict[str, Any]) -> float | None:
    """Top-1 of the supervised ``recipe`` at ``budget``, started from ``init`` (None: from scratch)."""
    same_data = {key: getattr(base, key) for key in _DATA_KEYS}
    flags = {"init_from": str(init) if init else None, "budget": budget, "seed": seed, "output": str(output),
             "progress": False, "device": base.device, "threads": base.threads, **same_data, **model}
    return train(merge_recipe(recipe, flags))["top1"]


def _pretrain(cfg: TrainConfig) -> dict[str, Any]:
    load_before = _load()
    summary = train(cfg)
    return {"schedule": summary["schedule"], "epochs": summary["epochs_done"],
            "compute": round(summary["relative_compute"] * summary["baseline_budget"], 3),
            "pretrain_s": summary["wall_s"], "load": [load_before, _load()], "knn_top1": summary["knn_top1"]}


def bench_mae(base: TrainConfig, output: str | Path, *, seeds: Sequence[int] = (0, 1), ratio: float = 1.5,
              finetune_recipe: str = "demo", finetune_budget: float = 4.0) -> dict[str, Any]:
    """Pre-train ``base`` (an MAE recipe) with ET++ and as the baseline at equal and ``ratio`` x the
    compute, for each seed, into ``output/<run>-s<seed>``; fine-tune each, and a classifier from
    scratch. Returns the per-run rows, the means over the seeds and the k-NN curves."""
    out = Path(output)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    budget = base.budget or base.curriculum().budget
    for seed in seeds:
        for name, overrides in pretrain_runs(budget, ratio):
            cfg = dataclasses.replace(base, seed=seed, output=str(out / f"{name}-s{seed}"), progress=False, **overrides)
            row = {"run": name, "seed": seed, **_pretrain(cfg)}
            model = checkpoint_architecture(Path(cfg.output) / "last.pt")
            row["finetune_top1"] = _finetune(Path(cfg.output) / "last.pt", base, seed, finetune_recipe,
                                             finetune_budget, out / f"{name}-s{seed}-finetune", model)
            rows.append(row)
            curves[f"{name} s{seed}"] = _knn_curve(Path(cfg.output))
        model = {"model": base.model, "patch_size": base.vit_patch()}
        rows.append({"run": "scratch", "seed": seed, "finetune_top1": _finetune(
            None, base, seed, finetune_recipe, finetune_budget, out / f"scratch-s{seed}-finetune", model)})
    etpp_compute = statistics.mean(r["compute"] for r in rows if r["run"] == "etpp")
    for row in rows:
        if row.get("compute") is not None:
            row["relative_compute"] = round(row["compute"] / etpp_compute, 3)
    return {"rows": rows, "means": _means(rows), "curves": curves, "seeds": list(seeds), "ratio": ratio,
            "budget": budget, "finetune": {"recipe": finetune_recipe, "budget": finetune_budget},
            "recipe": dataclasses.asdict(base)}


def _knn_curve(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(round(r["time"] / 60, 4), r["knn_top1"]) for r in rows if r.get("knn_top1") is not None]


def _means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, the mean over the seeds of each figure, with its lowest and highest seed."""
    out = []
    for name in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == name]
        mean: dict[str, Any] = {"run": name, "seeds": len(mine)}
        for key in ("compute", "relative_compute", "pretrain_s", "knn_top1", "finetune_top1"):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                mean[key] = round(statistics.mean(values), 2)
                mean[f"{key}_range"] = [round(min(values), 2), round(max(values), 2)]
        out.append(mean)
    return out


def mae_tables(doc: dict[str, Any]) -> str:
    """The means over the seeds, then every run, as Markdown."""
    means = markdown_table(doc["means"], ["run", "seeds", "compute", "relative_compute", "pretrain_s", "knn_top1",
                                          "knn_top1_range", "finetune_top1", "finetune_top1_range"])
    runs = markdown_table([{**r, "load": "/".join(f"{x:g}" for x in r.get("load", []))} for r in doc["rows"]],
                          MAE_RUN_COLUMNS)
    return (f"means over seeds {', '.join(map(str, doc['seeds']))} (ranges: lowest and highest seed)\n\n{means}\n\n"
            f"every run (load: the 1-minute load average before and after the pre-training)\n\n{runs}")
