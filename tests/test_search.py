"""The schedule search: candidate order and stopping rule on fake proxies, the budget
arithmetic, the output files, resume after a kill (the cache), and bad input."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from etpp_dali.cli import main
from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.search.budget import ComputeBudget, WallClockBudget, allocate_epochs
from etpp_dali.search.report import schedule_yaml
from etpp_dali.search.sequential import sequential_search
from etpp_dali.search.space import SearchError, SearchSpace, max_proxy_runs

ROOT = Path(__file__).resolve().parents[1]


class FakeProxy:
    """Top-1 from the bands: ``score(bands)``; records every schedule it is asked about (and, in
    ``stages``, the stage it was scored at: None for the end)."""

    def __init__(self, score):
        self.score = score
        self.calls: list[tuple[int, ...]] = []
        self.stages: list[int | None] = []

    def __call__(self, schedule: Curriculum, stage: int | None = None) -> float:
        bands = tuple(s.band for s in schedule.stages)
        self.calls.append(bands)
        self.stages.append(stage)
        return self.score(bands)


def space(**over):
    values = dict(resolution=64, stages=4, candidates=[28, 36, 46, 54], tolerance=0.5)
    values.update(over)
    return SearchSpace.create(**values)


def budget(epochs=12.0):
    return ComputeBudget(epochs, baseline_budget=18)


# --------------------------------------------------------------------- order and stopping
def test_candidates_smallest_first_and_first_within_tolerance_wins():
    # a stage loses 1 point per band step below 46 in the first two stages, always after them
    def score(bands):
        loss = 0.0
        for k, b in enumerate(bands):
            floor = 46 if k < 2 else 64
            loss += sum(1.0 for c in (28, 36, 46, 54) if b <= c < floor)
        return 80.0 - loss

    proxy = FakeProxy(score)
    result = sequential_search(space(), budget(), proxy)
    assert result.bands == (46, 46, 64, 64)
    assert proxy.calls == [
        (64, 64, 64, 64),                                         # stage 0 reference
        (28, 64, 64, 64), (36, 64, 64, 64), (46, 64, 64, 64),     # smallest first, stop at 46
        (46, 46, 64, 64),                                         # stage 1 starts at stage 0's band
        (46, 46, 46, 64), (46, 46, 54, 64),                       # stage 2: none passes -> R, stop
    ]
    assert len(set(proxy.calls)) == len(proxy.calls)  # the reference of stage k+1 is never rerun
    assert [t.accepted for t in result.trials if t.role == "candidate"] == [False, False, True, True, False, False]
    assert result.top1 == 80.0 and result.reference_top1 == 80.0


def test_tolerance_is_against_the_stage_reference():
    drops = {28: 0.6, 36: 0.5, 46: 0.2, 54: 0.0, 64: 0.0}  # points lost when stage 0 is at this band
    proxy = FakeProxy(lambda bands: 70.0 - drops[bands[0]] - 5.0 * (bands[1] < 64))
    result = sequential_search(space(tolerance=0.5), budget(), proxy)
    assert result.bands == (36, 64, 64, 64)  # 0.6 lost at 28 is too much, 0.5 at 36 is within
    result = sequential_search(space(tolerance=0.0), budget(), FakeProxy(proxy.score))
    assert result.bands == (54, 64, 64, 64)


def test_all_stages_small_when_nothing_is_lost():
    proxy = FakeProxy(lambda bands: 50.0)
    result = sequential_search(space(), budget(), proxy)
    assert result.bands == (28, 28, 28, 28)
    assert len(proxy.calls) == 1 + 4  # the reference and one candidate a stage
    assert result.schedule.name == "etpp-search"
    assert [s.magnitude for s in result.schedule.stages] == [0.0, 2.5, 5.0, 7.5]


@pytest.mark.parametrize("stages,n", [(1, 1), (2, 2), (3, 4), (4, 3)])
def test_max_proxy_runs_bounds_every_outcome(stages, n):
    """Over every pass/fail pattern of the candidates, the runs never exceed S + n, and some
    pattern needs exactly that many."""
    sp = SearchSpace.create(resolution=64, stages=stages, candidates=[20, 28, 36, 46][:n])
    worst = 0
    for pattern in itertools.product([False, True], repeat=stages * n):
        def score(bands, pattern=pattern):
            # the last stage below R decides: pass/fail looked up by (stage, band index)
            below = [k for k, b in enumerate(bands) if b < 64]
            if not below:
                return 10.0
            k = below[-1]
            return 10.0 if pattern[k * n + sp.candidates.index(bands[k])] else 0.0
        proxy = FakeProxy(score)
        sequential_search(sp, budget(100.0), proxy)
        worst = max(worst, len(proxy.calls))
    assert worst == max_proxy_runs(sp) == stages + n


# ------------------------------------------------------------------------- the budget
def test_compute_budget_at_one_band_matches_the_preset_arithmetic():
    sp = SearchSpace.create(resolution=64, stages=10)
    assert sp.candidates == (28, 36, 46, 54)
    for band in (28, 46, 64):
        preset = Curriculum([StageSpec(band, m, 0.1) for m in sp.magnitudes()], budget=12, resolution=64)
        built = budget(12).build([band] * 10, sp)
        assert built.total_epochs == preset.total_epochs  # the same whole run, spread alike
        assert max(abs(a.epochs - b.epochs) for a, b in zip(built.stages, preset.stages)) <= 1
    assert [s.epochs for s in budget(12).build([64] * 10, sp).stages] == [1, 1, 1, 1, 2, 1, 1, 1, 1, 2]
    built = budget(12).build([28, 28, 46, 46, 46, 46, 64, 64, 64, 64], sp)
    assert [s.magnitude for s in built.stages] == sp.magnitudes() and built.baseline_budget == 18
    assert [s.epochs for s in built.stages] == [6, 6, 2, 2, 3, 2, 1, 1, 1, 2]  # the ET++ preset's 12, 9, 5 per band


def test_compute_budget_never_spends_more_than_the_budget():
    # the presets' rounding gives 28, 28, 28, 54, 64 x 6 12.87 full-resolution epochs at E = 12;
    # the search's gives each stage at most its cumulative share and the last stage what is left
    sp = SearchSpace.create(resolution=64, stages=10)
    for bands in [(28, 28, 28, 54) + (64,) * 6, *itertools.product((28, 54, 64), repeat=3)]:
        bands = tuple(bands) + (64,) * (10 - len(bands))
        cur = budget(12).build(bands, sp)
        spent = 0.0
        for k, s in enumerate(cur.stages):
            spent += s.compute
            assert spent <= 12 * (k + 1) / 10 + 1e-9
        assert 12 - (bands[-1] / 64) ** 2 < cur.total_compute <= 12 + 1e-9
    assert allocate_epochs([0.5, 1.0], 3.0) == [3, 1]  # stage 0: 1.5 / 0.5; stage 1: the 1.5 left


def test_compute_budget_too_small_is_unaffordable_and_named():
    sp = SearchSpace.create(resolution=64, stages=10)
    assert budget(9).build([64] * 10, sp) is None  # some stage gets no whole data epoch
    assert budget(9).build([28] * 10, sp) is not None
    assert "--budget 9" in budget(9).shortfall(sp) and "at least 10" in budget(9).shortfall(sp)
    with pytest.raises(SearchError, match="--budget 9"):
        sequential_search(sp, budget(9), FakeProxy(lambda bands: 1.0))


def test_wall_clock_budget_epochs_and_file_round_trip(tmp_path):
    sp = space(stages=2)
    seconds = {28: 2.0, 36: 3.0, 46: 4.0, 54: 4.5, 64: 5.0}
    wall = WallClockBudget(100.0, seconds, baseline_budget=18)
    assert wall.epochs([28, 64], sp) == [25, 10]
    cur = wall.build([28, 64], sp)
    assert [s.epochs for s in cur.stages] == [25, 10]
    assert wall.cost(cur) == pytest.approx(100.0)
    path = tmp_path / "s.yaml"
    path.write_text(schedule_yaml(cur, ["a comment"]))
    back = Curriculum.from_file(path)
    assert back == cur and [s.epochs for s in back.stages] == [25, 10]
    assert "--wall-clock-budget 9" in WallClockBudget(9.0, seconds).shortfall(sp)


def test_candidates_the_budget_cannot_afford_are_never_run():
    # band 36 is measured slower than full resolution here: a stage at 36 gets no whole epoch
    seconds = {28: 1.0, 36: 30.0, 46: 2.0, 54: 2.0, 64: 2.0}
    proxy = FakeProxy(lambda bands: 50.0 - (bands[0] == 28) * 9)
    result = sequential_search(space(stages=2), WallClockBudget(40.0, seconds), proxy)
    assert all(36 not in bands for bands in proxy.calls)
    skipped = [t for t in result.trials if t.status == "unaffordable"]
    assert [(t.stage, t.band) for t in skipped] == [(0, 36)] and skipped[0].top1 is None
    assert result.bands == (46, 46)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,needle", [
    (dict(candidates=[96, 28]), "--candidates: 96 is above --resolution 64"),
    (dict(candidates=[8, 28]), "--candidates: 8 is below 16"),
    (dict(candidates=[64]), "--candidates: give at least one band below"),
    (dict(stages=0), "--stages 0"),
    (dict(tolerance=-1.0), "--tolerance -1"),
])
def test_bad_space_is_a_one_line_error_naming_the_flag(kwargs, needle):
    with pytest.raises(SearchError) as info:
        space(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def _search_cli(*args):
    return CliRunner().invoke(main, ["search", *args])


@pytest.mark.parametrize("args,needle", [
    (["--candidates", "96,128"], "--candidates: 96 is above --resolution 64"),
    (["--candidates", "8,28"], "--candidates: 8 is below 16"),
    (["--budget", "5"], "--budget 5: no candidate schedule fits"),
    (["--proxy-fraction", "0"], "--proxy-fraction 0"),
    (["--proxy-fraction", "1.5"], "--proxy-fraction 1.5"),
    (["--budget", "12", "--wall-clock-budget", "60"], "--budget and --wall-clock-budget"),
])
def test_cli_bad_input_one_line_errors(args, needle, tmp_path):
    res = _search_cli(*args, "--output", str(tmp_path / "s"), "--dry-run")
    assert res.exit_code != 0, res.output
    assert needle in res.output and res.output.strip().count("\n") == 0, res.output


def test_cli_data_without_val_split(tmp_path):
    from etpp_dali.data.demo import DemoSpec, write_demo_dataset

    root = write_demo_dataset(tmp_path / "d", DemoSpec(classes=2, train_per_class=4, val_per_class=1, size=24))
    (root / "val").rename(tmp_path / "elsewhere")
    res = _search_cli("--data", str(root), "--resolution", "24", "--budget", "12", "--output", str(tmp_path / "s"),
                      "--dry-run")
    assert res.exit_code != 0 and "has no val/ split" in res.output and "--val-split" in res.output
    assert res.output.strip().count("\n") == 0
    res = _search_cli("--data", str(root), "--val-split", "0.25", "--resolution", "24", "--budget", "12",
                      "--output", str(tmp_path / "s"), "--dry-run", "--proxy-fraction", "0.5")
    assert res.exit_code == 0, res.output
    assert "4 of 6 training images" in res.output and "2 validation images" in res.output  # 1 a class held out


def test_dry_run_prints_the_cost_and_writes_nothing(tmp_path):
    out = tmp_path / "s"
    res = _search_cli("--output", str(out), "--dry-run")
    assert res.exit_code == 0, res.output
    # the demo's defaults: at most S + (S + n) x 2 = 38 stages a seed, each 0.25 x 1.2 full-resolution epochs
    assert "at most 38 stages x 2 seed(s), each stage about 0.25 x 1.2 full-resolution epochs" in res.output
    assert "at most 22.8 full-resolution epochs, 1.9 x one training run of the budget" in res.output
    res = _search_cli("--output", str(out), "--dry-run", "--proxy-fraction", "0.5")
    assert res.exit_code == 0, res.output
    assert "at most 28 proxy runs (14 schedules x 2 seed(s)" in res.output  # S + n schedules, 2 seeds each
    assert "0.5 x 12 = 6 full-resolution epochs" in res.output
    assert not out.exists()
    res = _search_cli("--output", str(out), "--dry-run", "--proxy-seeds", "0")
    assert res.exit_code != 0 and "--proxy-seeds 0 must be an integer >= 1" in res.output
    assert res.output.strip().count("\n") == 0 and not out.exists()  # refused before any work


# -------------------------------------------------- the trainer-backed proxy and its cache
TINY = ["--model", "test_resnet", "--resolution", "32", "--budget", "4", "--stages", "2", "--candidates", "16,24",
        "--batch-size", "16", "--threads", "2", "--proxy-seeds", "1"]


def test_proxy_subset_is_class_balanced_and_seeded(demo_root, tmp_path):
    from etpp_dali.search.proxy import plan_proxy_data

    a = plan_proxy_data(demo_root, tmp_path, fraction=0.25, seed=0, val_split=None)
    assert len(a.train) == 4 * 6 and len(a.val) == 4 * 6 and a.train_images == 96
    assert sorted({label for _, label in a.train}) == [0, 1, 2, 3]
    assert all(sum(1 for _, label in a.train if label == c) == 6 for c in range(4))
    assert plan_proxy_data(demo_root, tmp_path, fraction=0.25, seed=0, val_split=None) == a
    assert plan_proxy_data(demo_root, tmp_path, fraction=0.25, seed=1, val_split=None).train != a.train
    held = plan_proxy_data(demo_root / "train", tmp_path, fraction=1.0, seed=0, val_split=0.25)
    assert len(held.val) == 4 * 6 and held.train_images == 4 * 18
    assert not {p for p, _ in held.val} & {p for p, _ in held.train}  # the subset never draws the hold-out
    root = a.materialise()
    assert len(list((root / "train").rglob("*.jpg"))) == 24 and len(list((root / "val").rglob("*.jpg"))) == 24


@pytest.mark.parametrize("seed", [0, 5])
def test_train_and_search_hold_out_the_same_images_for_val_split(demo_root, tmp_path, seed):
    """`etpp train --val-split 0.2` and `etpp search --val-split 0.2` on one data set: the same
    validation images, through the functions each command opens its data with."""
    from etpp_dali.search.proxy import plan_proxy_data
    from etpp_dali.train.data import _open_splits, data_root
    from etpp_dali.train.trainer import TrainConfig

    cfg = TrainConfig(data=str(demo_root / "train"), val_split=0.2, seed=seed)  # no val/ folder there
    train_src, val_src = _open_splits(data_root(cfg), cfg)
    proxy = plan_proxy_data(data_root(cfg), tmp_path, fraction=0.5, seed=cfg.seed, val_split=cfg.val_split)
    held = sorted(r.path for r in val_src.records)
    assert len(held) == 4 * 5  # round(0.2 x 24) of each class
    assert sorted(path for path, _ in proxy.val) == held
    assert sorted((path, label) for path, label in proxy.val) == sorted((r.path, r.label) for r in val_src.records)
    assert proxy.train_images == len(train_src) == 4 * 19
    assert {path for path, _ in proxy.train} <= {r.path for r in train_src.records}


def test_cache_key_follows_what_changes_a_run(demo_root, tmp_path):
    import dataclasses

    from etpp_dali.search.proxy import TrainerProxy, plan_proxy_data
    from etpp_dali.train.trainer import TrainConfig

    data = plan_proxy_data(demo_root, tmp_path, fraction=0.5, seed=0, val_split=None)
    cfg = TrainConfig(model="test_resnet", resolution=32)
    sp = space(resolution=32, stages=2, candidates=[16, 24])
    cur, other = budget(4).build([16, 32], sp), budget(4).build([24, 32], sp)
    key = TrainerProxy(cfg, data, tmp_path).key(cur)
    assert TrainerProxy(cfg, data, tmp_path).key(other) != key
    assert TrainerProxy(dataclasses.replace(cfg, lr=1e-3), data, tmp_path).key(cur) != key
    assert TrainerProxy(dataclasses.replace(cfg, seed=1), data, tmp_path).key(cur) != key
    assert TrainerProxy(dataclasses.replace(cfg, threads=1, output="x", progress=False), data, tmp_path).key(cur) == key
    subset = plan_proxy_data(demo_root, tmp_path, fraction=0.25, seed=0, val_split=None)
    assert TrainerProxy(cfg, subset, tmp_path).key(cur) != key


def test_proxy_top1_is_the_mean_over_its_seeds_and_each_seed_is_cached(demo_root, tmp_path, monkeypatch):
    import etpp_dali.search.proxy
    from etpp_dali.search.proxy import TrainerProxy, plan_proxy_data
    from etpp_dali.train.trainer import TrainConfig

    trained = []

    def fake_train(cfg, *, start, stop_stage, on_stage_end, val_batches):
        assert cfg.echo == "off"  # auto's factor follows timings: a proxy run must not
        assert start is None and stop_stage == 1  # nothing to continue from; scored at the end
        trained.append(cfg.seed)
        return {"top1": 50.0 + 10 * (cfg.seed - 3), "wall_s": 0.0, "interrupted": False}

    monkeypatch.setattr(etpp_dali.search.proxy, "train_segment", fake_train)
    data = plan_proxy_data(demo_root, tmp_path, fraction=0.5, seed=0, val_split=None)
    cur = budget(4).build([16, 32], space(resolution=32, stages=2, candidates=[16, 24]))
    base = TrainConfig(model="test_resnet", resolution=32, seed=3, echo="auto")
    proxy = TrainerProxy(base, data, tmp_path / "runs", seeds=3)
    assert proxy(cur) == pytest.approx(60.0) and trained == [3, 4, 5]  # (50 + 60 + 70) / 3
    assert len({proxy.key(cur, i) for i in range(3)}) == 3 and proxy.cached_runs() == 3
    assert proxy(cur) == pytest.approx(60.0) and trained == [3, 4, 5]  # all three read back, none retrained


def test_search_writes_a_schedule_that_etpp_train_takes(demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `etpp train` writes its run under ./runs
    out = tmp_path / "search"
    res = _search_cli("--data", str(demo_root), *TINY, "--output", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "search.json").read_text())
    assert doc["status"] == "done" and len(doc["bands"]) == 2
    schedule = Curriculum.from_file(out / "schedule.yaml")
    assert [s.band for s in schedule.stages] == doc["bands"] and schedule.total_compute <= 4 + 1e-9
    assert f"chosen bands {', '.join(map(str, doc['bands']))}" in res.output
    trials = (out / "trials.md").read_text()
    assert trials.count("\n") == 2 + len(doc["trials"]) and "reference" in trials
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((out / "runs").rglob("*.pt"))  # finished proxy runs keep their result only
    command = doc["command"].split()
    assert command[:2] == ["etpp", "train"] and str(out / "schedule.yaml") in command
    trained = CliRunner().invoke(main, command[1:] + ["--no-progress", "--output", str(tmp_path / "final")])
    assert trained.exit_code == 0, trained.output
    assert json.loads((tmp_path / "final" / "summary.json").read_text())["schedule"] == "etpp-search"
    again = _search_cli("--data", str(demo_root), *TINY, "--output", str(out))  # all cached: nothing trains
    assert again.exit_code == 0 and "training the proxy" not in again.output
    assert f"; {len(doc['trials'])} already done" in again.output
    other = _search_cli("--data", str(demo_root), *TINY, "--tolerance", "2", "--output", str(out))
    assert other.exit_code != 0 and "holds a search with other settings (space)" in other.output


def _start_search(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "etpp_dali", "search", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_search_resumes_where_it_stopped(demo_root, tmp_path):
    out = tmp_path / "search"
    args = ["--data", str(demo_root), *TINY[:5], "8", *TINY[6:], "--output", str(out)]  # budget 8: longer runs
    proc = _start_search(args)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = list(out.glob("runs/*/result.json"))
        running = [p for p in out.glob("runs/*/last.pt") if not (p.parent / "result.json").exists()]
        if done and running:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    resumed = _start_search(args)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert f"; {len(finished)} already done" in output and "resuming the proxy" in output
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished runs were not redone
    doc = json.loads((out / "search.json").read_text())
    schedule = Curriculum.from_file(out / "schedule.yaml")
    assert doc["status"] == "done" and 8 - 1 < schedule.total_compute <= 8 + 1e-9


def test_wall_clock_budget_times_each_band_at_the_batch_training_uses():
    from etpp_dali.search.wallclock import band_batches
    from etpp_dali.train.trainer import TrainConfig

    sp = SearchSpace.create(resolution=64, stages=10)
    auto = TrainConfig(model="resnet10t", resolution=64, batch_size=64, global_batch=128, stage_batch="auto")
    assert band_batches(auto, sp) == {28: 128, 36: 128, 46: 128, 54: 64, 64: 64}  # the demo recipe's stages
    assert band_batches(TrainConfig(model="resnet10t", resolution=64, batch_size=64), sp) == dict.fromkeys(
        (28, 36, 46, 54, 64), 64)


def test_wall_clock_budget_measures_once_and_names_the_flag(demo_root, tmp_path):
    out = tmp_path / "search"
    args = ["--data", str(demo_root), *TINY[:4], "--stages", "2", "--candidates", "16,24", "--batch-size", "16",
            "--threads", "2", "--output", str(out), "--dry-run", "--proxy-fraction", "0.5"]
    res = _search_cli(*args, "--wall-clock-budget", "600")
    assert res.exit_code == 0, res.output
    assert "measuring test_resnet" in res.output and "predicted seconds per data epoch: B = 16" in res.output
    assert "each about 0.5 x 600 = 300 s" in res.output
    rates = json.loads((out / "measure.json").read_text())["rates"]
    assert sorted(r["band"] for r in rates["loader"]) == [16, 24, 32]
    assert sorted((r["band"], r["batch"]) for r in rates["step"]) == [(16, 16), (24, 16), (32, 16)]
    res = _search_cli(*args, "--wall-clock-budget", "0.01")
    assert res.exit_code != 0 and "--wall-clock-budget 0.01: no candidate schedule fits" in res.output
    assert res.output.strip().count("\n") == 0  # the kept measurement is reused: no "measuring" line
