"""Schedule search (``etpp search``): a computational-constrained sequential search for the
bands of an EfficientTrain++ schedule.

EfficientTrain and EfficientTrain++ designed their schedules with a search ("greedy",
"computational-constrained sequential") whose procedure they do not publish. What follows is
this project's own design.

**The schedules searched.** ``S`` stages; stage k has RandAugment magnitude ``m_k = 10 k / S``
(the presets' m = stage index for S = 10) and owns an equal share of the budget:

- ``--budget E``: ``E / S`` full-resolution epochs of compute, as in the ET++ presets; one data
  epoch at band B costs ``c(B) = (B / R)**alpha`` of them (:class:`ComputeBudget`).
- ``--wall-clock-budget W``: ``W / S`` seconds; one data epoch at band B costs ``c(B) = t(B)``,
  its predicted seconds on this machine, from the same measurement as ``etpp schedule
  --measure`` (:class:`WallClockBudget`).

Whole data epochs (:func:`allocate_epochs`): stage k runs the most epochs that keep the cost
of stages 0..k within their shares, ``(k + 1) W / S``::

    n_k = floor(((k + 1) W / S - sum_{j<k} n_j c(B_j)) / c(B_k))

so what rounding leaves over passes to the next stage, and no schedule ever spends more than
the budget. (The presets' integer arithmetic rounds each band's whole run on its own, which
can spend more than ``W / S`` on a stage whose band differs from its neighbours'.) All stages
at one band get the presets' whole run, spread within one epoch of theirs. The schedule is
written with its data epochs (``split: epochs``), so ``etpp train --preset FILE`` trains
exactly what was scored.

So every candidate schedule spends the budget less at most one data epoch of its last stage,
and candidates are compared at (nearly) equal cost. A schedule is *affordable* when every stage gets at
least one whole data epoch; a candidate the budget cannot afford is never run.

**The search.** Stage by stage, from the first:

1. the *reference* of stage k: the bands chosen so far, then the full resolution R for stage k
   and every later stage;
2. the *candidates*: the bands below R, smallest first, never below the band chosen for stage
   k - 1 (a curriculum only adds frequencies, and this bounds the cost), each with the chosen
   bands before it and R after it;
3. the first candidate whose proxy top-1 is at least the reference's minus the tolerance is
   chosen for stage k; when none is, stage k and every later one get R.

The run accepted at stage k is the reference of stage k + 1, so each stage costs only its
candidates: at most ``S + n`` proxy runs for ``n`` candidates below R. This module is the pure
logic: it takes a ``proxy(schedule) -> top1`` callable. :mod:`etpp_dali.search.proxy` is the
trainer-backed proxy (a class-balanced subset of the training set, cached runs);
:func:`run_search` puts the two together for the command line.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from etpp_dali.curriculum.schedule import BASELINE_BUDGET, Curriculum, StageSpec, scale_band
from etpp_dali.curriculum.schedule_file import DEFAULT_BUDGET, MIN_BAND
from etpp_dali.util.files import write_text_atomic

if TYPE_CHECKING:
    from etpp_dali.train.trainer import TrainConfig

__all__ = ["DEFAULT_CANDIDATES", "SearchError", "SearchSpace", "ComputeBudget", "WallClockBudget", "Trial",
           "SearchResult", "allocate_epochs", "band_batches", "sequential_search", "max_proxy_runs", "schedule_yaml",
           "trial_rows", "trials_table", "plot_search", "run_search"]

DEFAULT_CANDIDATES = (96, 128, 160, 192, 224)  # at 224 px; scaled to the resolution
_EPS = 1e-9

Proxy = Callable[[Curriculum], float]


class SearchError(ValueError):
    """Search settings that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class SearchSpace:
    """What the search chooses from: ``candidates`` are the bands below ``resolution``, ascending."""

    resolution: int
    stages: int
    candidates: tuple[int, ...]
    tolerance: float = 0.5

    @classmethod
    def create(cls, *, resolution: int, stages: int = 10, candidates: Sequence[int] | None = None,
               tolerance: float = 0.5) -> "SearchSpace":
        """Validate the flags; default candidates are 96, 128, 160, 192, 224 scaled to R."""
        if not isinstance(resolution, int) or resolution < MIN_BAND:
            raise SearchError(f"--resolution {resolution!r} must be an integer >= {MIN_BAND}")
        if stages < 1:
            raise SearchError(f"--stages {stages} must be >= 1")
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise SearchError(f"--tolerance {tolerance} must be >= 0 (points of proxy top-1)")
        if candidates is None:
            candidates = [scale_band(b, resolution) for b in DEFAULT_CANDIDATES]
        for band in candidates:
            if band > resolution:
                raise SearchError(f"--candidates: {band} is above --resolution {resolution}; "
                                  f"give bands between {MIN_BAND} and {resolution}")
            if band < MIN_BAND:
                raise SearchError(f"--candidates: {band} is below {MIN_BAND} pixels; "
                                  f"give bands between {MIN_BAND} and {resolution}")
        below = tuple(sorted({int(b) for b in candidates if b < resolution}))
        if not below:
            raise SearchError(f"--candidates: give at least one band below --resolution {resolution}")
        return cls(resolution, int(stages), below, float(tolerance))

    def magnitudes(self) -> list[float]:
        """The preset rule, m = stage index, scaled to the stage count (0 .. 10 (S-1)/S)."""
        return [round(10.0 * k / self.stages, 4) for k in range(self.stages)]

    def candidates_from(self, floor: int | None) -> list[int]:
        """The candidates a stage tries, smallest first, none below ``floor``."""
        return [b for b in self.candidates if floor is None or b >= floor]


# ------------------------------------------------------------------------------ budgets
def allocate_epochs(epoch_costs: Sequence[float], total: float) -> list[int]:
    """Whole data epochs per stage when each of the ``S`` stages owns ``total / S`` and one data
    epoch of stage k costs ``epoch_costs[k]``: stage k runs the most epochs that keep stages
    0..k within their shares (the module docstring), so the sum never exceeds ``total``."""
    stages, spent, epochs = len(epoch_costs), 0.0, []
    for k, cost in enumerate(epoch_costs):
        n = max(0, math.floor((total * (k + 1) / stages - spent) / cost + _EPS))
        epochs.append(n)
        spent += n * cost
    return epochs


class _StageBudget:
    """What both budgets share: each of the ``S`` stages owns ``total / S``; one data epoch at
    band B costs :meth:`epoch_cost`; a schedule runs the whole epochs of :func:`allocate_epochs`
    and is written with them (``split: epochs``, the shares being the epochs over their sum)."""

    flag: str
    unit: str
    name: str

    def __init__(self, total: float, *, alpha: float, baseline_budget: float) -> None:
        self.total = float(total)
        self.alpha = alpha
        self.baseline_budget = baseline_budget

    def epoch_cost(self, band: int, resolution: int) -> float:
        raise NotImplementedError

    def epochs(self, bands: Sequence[int], space: SearchSpace) -> list[int]:
        return allocate_epochs([self.epoch_cost(int(b), space.resolution) for b in bands], self.total)

    def build(self, bands: Sequence[int], space: SearchSpace) -> Curriculum | None:
        """The schedule of ``bands``, or None when some stage gets no whole data epoch."""
        epochs = self.epochs(bands, space)
        if min(epochs) < 1:
            return None
        total = sum(epochs)
        specs = [StageSpec(int(b), m, n / total) for b, m, n in zip(bands, space.magnitudes(), epochs)]
        return Curriculum(specs, budget=total, resolution=space.resolution, split="epochs", alpha=self.alpha,
                          baseline_budget=self.baseline_budget, name=self.name)

    def cost(self, schedule: Curriculum) -> float:
        """What ``schedule`` spends, in the budget's unit."""
        return sum(s.epochs * self.epoch_cost(s.band, schedule.resolution) for s in schedule.stages)


class ComputeBudget(_StageBudget):
    """Each stage owns ``1/S`` of ``epochs`` full-resolution epochs of compute (ET++'s split)."""

    flag = "--budget"
    unit = "full-resolution epochs"
    name = "etpp-search"

    def __init__(self, epochs: float, *, alpha: float = 2.0, baseline_budget: float = BASELINE_BUDGET) -> None:
        if not (epochs > 0 and math.isfinite(epochs)):
            raise SearchError(f"--budget {epochs} must be a number > 0 (full-resolution epochs of compute)")
        super().__init__(epochs, alpha=alpha, baseline_budget=baseline_budget)

    def epoch_cost(self, band: int, resolution: int) -> float:
        return (band / resolution) ** self.alpha

    def describe(self, space: SearchSpace) -> str:
        return (f"budget: E = {self.total:g} full-resolution epochs of compute, {self.total / space.stages:.3g} a "
                f"stage (cost ~ (B/R)^{self.alpha:g})")

    def shortfall(self, space: SearchSpace) -> str:
        need = space.stages  # one data epoch a stage at R costs one full-resolution epoch
        return (f"--budget {self.total:g}: no candidate schedule fits: each of the {space.stages} stages owns "
                f"{self.total / space.stages:.2g} full-resolution epochs, less than one data epoch at "
                f"--resolution {space.resolution}; raise --budget to at least {need} or lower --stages")


class WallClockBudget(_StageBudget):
    """Each stage owns ``1/S`` of ``seconds``; ``seconds_per_epoch[B]`` is the predicted time of
    one data epoch at band B on this machine."""

    flag = "--wall-clock-budget"
    unit = "s"
    name = "search-wall-clock"

    def __init__(self, seconds: float, seconds_per_epoch: Mapping[int, float], *, alpha: float = 2.0,
                 baseline_budget: float = BASELINE_BUDGET) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise SearchError(f"--wall-clock-budget {seconds} must be a number of seconds > 0")
        super().__init__(seconds, alpha=alpha, baseline_budget=baseline_budget)
        self.seconds_per_epoch = {int(b): float(t) for b, t in seconds_per_epoch.items()}

    def epoch_cost(self, band: int, resolution: int) -> float:
        return self.seconds_per_epoch[band]

    def describe(self, space: SearchSpace) -> str:
        per_epoch = ", ".join(f"B = {b}: {t:.3g} s" for b, t in sorted(self.seconds_per_epoch.items()))
        return (f"budget: {self.total:g} s of wall-clock here, {self.total / space.stages:.3g} s a stage; "
                f"predicted seconds per data epoch: {per_epoch}")

    def shortfall(self, space: SearchSpace) -> str:
        need = space.stages * self.seconds_per_epoch[space.resolution]
        return (f"--wall-clock-budget {self.total:g}: no candidate schedule fits: each of the {space.stages} "
                f"stages owns {self.total / space.stages:.3g} s, less than one data epoch at --resolution "
                f"{space.resolution} ({self.seconds_per_epoch[space.resolution]:.3g} s here); raise it to at least "
                f"{math.ceil(need)} s or lower --stages")


Budget = ComputeBudget | WallClockBudget


# ------------------------------------------------------------------------------- search
@dataclass
class Trial:
    """One schedule the search considered: a stage's reference or one of its candidates."""

    stage: int
    band: int
    role: str                       # "reference" or "candidate"
    bands: tuple[int, ...]
    status: str                     # "run" or "unaffordable" (never run)
    top1: float | None = None
    reference_top1: float | None = None
    accepted: bool = False
    compute: float | None = None    # the schedule's compute, full-resolution epochs
    cost: float | None = None       # the schedule's cost in the budget's unit

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["bands"] = ",".join(map(str, self.bands))
        return row


@dataclass
class SearchResult:
    bands: tuple[int, ...]
    schedule: Curriculum
    trials: list[Trial] = field(default_factory=list)
    top1: float | None = None  # proxy top-1 of the chosen schedule

    @property
    def reference_top1(self) -> float | None:
        """Proxy top-1 of the all-full-resolution schedule (the first reference)."""
        return self.trials[0].top1 if self.trials else None


def max_proxy_runs(space: SearchSpace) -> int:
    """An upper bound on the proxy runs: the first reference, then per stage its candidates
    from the previous choice up to the accepted one (S + n in all)."""
    return space.stages + len(space.candidates)


class _Search:
    """State of one sequential search: the runs made so far (by bands) and the trials."""

    def __init__(self, space: SearchSpace, budget: Budget, proxy: Proxy,
                 on_trial: Callable[[Trial], None] | None) -> None:
        self.space, self.budget, self.proxy = space, budget, proxy
        self.on_trial = on_trial or (lambda trial: None)
        self.scores: dict[tuple[int, ...], float] = {}
        self.trials: list[Trial] = []

    def score(self, trial: Trial, schedule: Curriculum) -> bool:
        """Set the trial's proxy top-1 (running the proxy unless these bands ran before); True
        when it was a new run."""
        new = trial.bands not in self.scores
        if new:
            self.scores[trial.bands] = float(self.proxy(schedule))
        trial.top1 = self.scores[trial.bands]
        trial.compute, trial.cost = schedule.total_compute, self.budget.cost(schedule)
        return new

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)
        self.on_trial(trial)

    def stage(self, k: int, chosen: list[int]) -> int:
        """The band of stage ``k`` given the bands chosen before it."""
        R, S = self.space.resolution, self.space.stages
        reference = Trial(k, R, "reference", tuple(chosen) + (R,) * (S - k), "run")
        ref_schedule = self.budget.build(reference.bands, self.space)
        if ref_schedule is None:
            raise SearchError(self.budget.shortfall(self.space))
        if self.score(reference, ref_schedule):
            self.record(reference)
        for band in self.space.candidates_from(chosen[-1] if chosen else None):
            trial = Trial(k, band, "candidate", tuple(chosen) + (band,) + (R,) * (S - k - 1), "run",
                          reference_top1=reference.top1)
            schedule = self.budget.build(trial.bands, self.space)
            if schedule is None:
                trial.status = "unaffordable"
                self.record(trial)
                continue
            new = self.score(trial, schedule)
            trial.accepted = trial.top1 >= reference.top1 - self.space.tolerance - _EPS
            if new:
                self.record(trial)
            if trial.accepted:
                return band
        return R

    def run(self) -> SearchResult:
        chosen: list[int] = []
        for k in range(self.space.stages):
            band = self.stage(k, chosen)
            chosen.append(band)
            if band == self.space.resolution:  # every later stage is at R too: nothing left to try
                chosen += [band] * (self.space.stages - k - 1)
                break
        schedule = self.budget.build(chosen, self.space)
        assert schedule is not None, "an accepted schedule is affordable"
        return SearchResult(tuple(chosen), schedule, self.trials, self.scores[tuple(chosen)])


def sequential_search(space: SearchSpace, budget: Budget, proxy: Proxy, *,
                      on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Choose each stage's band in turn (see the module docstring); ``proxy(schedule)`` returns
    the proxy top-1 of a schedule, ``on_trial`` hears of each trial as it ends."""
    return _Search(space, budget, proxy, on_trial).run()


# ------------------------------------------------------------------------------ outputs
def schedule_yaml(schedule: Curriculum, comment: Sequence[str] = ()) -> str:
    """The schedule file ``etpp train --preset FILE`` takes, with ``comment`` lines on top."""
    import yaml

    head = "".join(f"# {line}\n" for line in comment)
    return head + yaml.safe_dump(schedule.to_dict(), sort_keys=False)


TABLE_COLUMNS = ["stage", "band", "bands", "result", "top1", "reference_top1", "compute", "proxy_cost",
                 "cumulative_proxy_cost"]


def trial_rows(trials: Sequence[Trial], fraction: float) -> list[dict[str, Any]]:
    """One row a trial, with its outcome, what its proxy run cost (``fraction`` of its
    schedule's cost) and the search's cost so far, in the budget's unit."""
    rows, spent = [], 0.0
    for t in trials:
        row = t.to_dict()
        row["result"] = ("unaffordable" if t.status == "unaffordable" else "reference" if t.role == "reference"
                         else "accepted" if t.accepted else "rejected")
        if t.cost is not None:
            row["proxy_cost"] = round(fraction * t.cost, 3)
            spent += fraction * t.cost
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
    """Proxy top-1 of each run against the proxy cost the search had spent when it ended; the
    chosen path (the first reference, then each accepted candidate) joined and starred."""
    from etpp_dali.util.plots import pyplot, save_figure

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
        ax.axhline(runs[0]["top1"], color="tab:blue", linestyle="--", linewidth=1, label="all at full resolution")
    ax.set_xlabel(f"proxy cost spent by the search ({unit})")
    ax.set_ylabel("proxy top-1 (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    out = save_figure(fig, path)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- the command
def run_search(cfg: "TrainConfig", space: SearchSpace, *, output: str | Path, budget: float | None = None,
               wall_clock_budget: float | None = None, proxy_fraction: float = 0.5, proxy_seeds: int = 2,
               dry_run: bool = False, train_args: Sequence[str] = (),
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """``etpp search``: print the proxy cost, then (unless ``dry_run``) search with the
    trainer-backed proxy and write ``schedule.yaml``, ``trials.md``, ``search.png`` and
    ``search.json`` under ``output``. ``cfg`` holds the training settings (a recipe and flags);
    ``train_args`` are the ``etpp train`` flags that give the same settings (for the printed
    command). Running it again with the same settings resumes from the cached runs."""
    from etpp_dali.search.proxy import TrainerProxy, check_seeds, describe_subset, plan_proxy_data

    if budget is not None and wall_clock_budget is not None:
        raise SearchError("--budget and --wall-clock-budget exclude each other; give one")
    check_seeds(proxy_seeds)  # before anything is measured or written
    out = Path(output)
    data = plan_proxy_data(_data_root(cfg), out, fraction=proxy_fraction, seed=cfg.seed, val_split=cfg.val_split)
    settings = _settings(cfg, space, budget, wall_clock_budget, proxy_fraction, proxy_seeds, data.fingerprint)
    _check_output(out, settings)
    chosen = _budget(cfg, space, out, data, budget, wall_clock_budget, log)
    if chosen.build((space.resolution,) * space.stages, space) is None:
        raise SearchError(chosen.shortfall(space))
    proxy = TrainerProxy(cfg, data, out / "runs", seeds=proxy_seeds, on_start=lambda schedule, resumed: log(
        f"  {'resuming' if resumed else 'training'} the proxy of bands {_bands(schedule)} ..."))
    plan = _plan(space, chosen, proxy_fraction, proxy_seeds, proxy.cached_runs())
    log(chosen.describe(space))
    log(describe_subset(data, proxy_fraction))
    log(plan["text"])
    if dry_run:
        return {"dry_run": True, "plan": plan}
    write_text_atomic(out / "search.json", json.dumps({"settings": settings, "status": "running"}, indent=2) + "\n")
    result = sequential_search(space, chosen, proxy, on_trial=lambda t: log(_trial_line(t, proxy.last_seconds)))
    return _write_outputs(out, result, cfg, chosen, settings, plan, proxy_fraction, train_args)


def _data_root(cfg: "TrainConfig") -> Path:
    if not cfg.data:
        raise SearchError("--data: give an ImageFolder root with train/ and val/ (or demo)")
    if cfg.data == "demo":
        from etpp_dali.data.demo import DemoSpec, demo_dataset

        return demo_dataset(DemoSpec(classes=cfg.demo_classes, train_per_class=cfg.demo_train_per_class,
                                     val_per_class=cfg.demo_val_per_class, size=cfg.demo_size))
    return Path(cfg.data)


def _settings(cfg: "TrainConfig", space: SearchSpace, budget: float | None, wall_clock_budget: float | None,
              fraction: float, seeds: int, data_fingerprint: str) -> dict[str, Any]:
    """Everything that determines the search, as JSON (what an output folder is claimed with)."""
    from etpp_dali.search.proxy import training_settings

    doc = {"train": training_settings(cfg), "data": data_fingerprint, "space": asdict(space), "proxy_fraction": fraction,
           "proxy_seeds": seeds,
           "budget": {"wall_clock_s": wall_clock_budget} if wall_clock_budget is not None
           else {"epochs": _compute_budget(cfg, budget)},
           "baseline_budget": cfg.baseline_budget}
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


def _budget(cfg: "TrainConfig", space: SearchSpace, out: Path, data: Any, budget: float | None,
            wall_clock_budget: float | None, log: Callable[[str], None]) -> Budget:
    baseline = cfg.baseline_budget or BASELINE_BUDGET
    if wall_clock_budget is None:
        return ComputeBudget(_compute_budget(cfg, budget), baseline_budget=baseline)
    from etpp_dali.train.measure import overlap_for, seconds_per_epoch

    batches = band_batches(cfg, space)
    rates = _measured_rates(cfg, space, batches, out, data, log)
    per_epoch = {b: seconds_per_epoch(train_images=data.train_images, step_rate=rates.step[(b, n)],
                                      loader_rate=rates.loader[b], overlap=overlap_for(rates.device))
                 for b, n in batches.items()}
    return WallClockBudget(wall_clock_budget, per_epoch, baseline_budget=baseline)


def band_batches(cfg: "TrainConfig", space: SearchSpace) -> dict[int, int]:
    """The per-device batch a training run of ``cfg`` uses at each band the search may pick: the
    ``stage_batch: auto`` rule where the recipe sets it (a small band runs a larger batch, and
    so a faster step), else the recipe's batch. On one device, as the search trains."""
    from etpp_dali.curriculum.batching import AUTO, auto_stage_batch, global_batch_size

    bands = (*space.candidates, space.resolution)
    if cfg.stage_batch != AUTO:
        return {b: cfg.batch_size for b in bands}
    per_device = global_batch_size(cfg.batch_size, cfg.global_batch, 1)
    return {b: auto_stage_batch(cfg.batch_size, b, space.resolution, per_device, cfg.stage_batch_cap) for b in bands}


def _compute_budget(cfg: "TrainConfig", budget: float | None) -> float:
    """--budget, else the recipe's budget, else EfficientTrain++'s E = 200."""
    return budget if budget is not None else cfg.budget or DEFAULT_BUDGET


def _measured_rates(cfg: "TrainConfig", space: SearchSpace, batches: Mapping[int, int], out: Path, data: Any,
                    log: Callable[[str], None]) -> Any:
    """The per-band rates of ``etpp schedule --measure``, each band at its batch in ``batches``,
    measured once and kept in ``measure.json`` so that a resumed search uses the same numbers
    (and finds its runs)."""
    from etpp_dali.train.measure import Rates, measure_rates

    key = {"model": cfg.model, "batch": cfg.batch_size, "device": cfg.device, "amp": cfg.amp,
           "channels_last": cfg.channels_last, "bands": list(space.candidates), "resolution": space.resolution,
           "batches": {str(b): n for b, n in sorted(batches.items())}, "data": data.fingerprint}
    path = out / "measure.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return Rates.from_dict(doc["rates"])
    except (OSError, ValueError, KeyError):
        pass
    log("measuring {} and the loader at bands {} on this machine ...".format(
        cfg.model, ", ".join(f"{b} (batch {n})" for b, n in sorted(batches.items()))))
    top = space.magnitudes()[-1]
    bands = sorted(batches)
    probe = Curriculum([StageSpec(b, top, 1.0 / len(bands), batch=batches[b]) for b in bands], budget=10_000,
                       resolution=space.resolution)
    rates = measure_rates(probe, model=cfg.model, data=_data_root(cfg), batch=cfg.batch_size, device=cfg.device,
                          amp=cfg.amp, channels_last=cfg.channels_last, threads=cfg.threads)
    write_text_atomic(path, json.dumps({"key": key, "rates": rates.to_dict()}, indent=2) + "\n")
    return rates


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


def _bands(schedule: Curriculum) -> str:
    return ",".join(str(s.band) for s in schedule.stages)


def _trial_line(trial: Trial, seconds: float) -> str:
    where = f"stage {trial.stage} {trial.role} B = {trial.band}"
    if trial.status == "unaffordable":
        return f"{where}: skipped, the budget cannot afford it"
    if trial.role == "reference":
        return f"{where}: proxy top-1 {trial.top1:.2f}% ({seconds:.0f} s)"
    verdict = "accepted" if trial.accepted else "rejected"
    return (f"{where}: proxy top-1 {trial.top1:.2f}% against {trial.reference_top1:.2f}%: {verdict} "
            f"({seconds:.0f} s)")


def _write_outputs(out: Path, result: SearchResult, cfg: "TrainConfig", budget: Budget,
                   settings: Mapping[str, Any], plan: Mapping[str, Any], fraction: float,
                   train_args: Sequence[str]) -> dict[str, Any]:
    rows = trial_rows(result.trials, fraction)
    table = trials_table(rows)
    schedule = result.schedule
    schedule_path = out / "schedule.yaml"
    command = " ".join(["etpp", "train", *train_args, "--preset", str(schedule_path)])
    comment = [f"written by etpp search: {cfg.model}, bands {_bands(schedule)}",
               f"proxy top-1 {result.top1:.2f}% (all stages at {schedule.resolution}: {result.reference_top1:.2f}%)",
               f"train it: {command}"]
    write_text_atomic(schedule_path, schedule_yaml(schedule, comment))
    write_text_atomic(out / "trials.md", table + "\n")
    png = plot_search(rows, out / "search.png", unit=budget.unit,
                      title=f"{cfg.model}, search at {budget.flag} {budget.total:g}: bands {_bands(schedule)}")
    doc = {"settings": settings, "status": "done", "plan": dict(plan), "bands": list(result.bands),
           "top1": result.top1, "reference_top1": result.reference_top1, "trials": rows,
           "schedule": schedule.summary(), "command": command}
    write_text_atomic(out / "search.json", json.dumps(doc, indent=2) + "\n")
    return {**doc, "table": table, "schedule_file": str(schedule_path), "plot": str(png),
            "trials_file": str(out / "trials.md")}
