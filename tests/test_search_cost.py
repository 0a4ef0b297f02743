"""What the search costs: candidates continued from the accepted path train exactly what a run
from scratch trains, the early scoring rule on a fake proxy with known scores, the stages each
trial trains, the bound printed before and the cost printed after."""

import itertools
from pathlib import Path

import pytest
import torch

import etpp_dali.search.segments
from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.search.budget import ComputeBudget, WallClockBudget
from etpp_dali.search.proxy import TrainerProxy, plan_proxy_data
from etpp_dali.search.report import schedule_yaml, trial_rows
from etpp_dali.search.run import _cost, _plan
from etpp_dali.search.sequential import sequential_search
from etpp_dali.search.space import SearchSpace, max_proxy_runs, max_proxy_stages
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.trainer import train


class PrefixProxy:
    """Top-1 from the bands of the stages scored: ``scores[bands[:stage + 1]]``; records each call
    as (bands, stage), stage None meaning the end of the schedule."""

    def __init__(self, scores):
        self.scores = scores
        self.calls: list[tuple[tuple[int, ...], int | None]] = []

    def __call__(self, schedule: Curriculum, stage: int | None = None) -> float:
        bands = tuple(s.band for s in schedule.stages)
        self.calls.append((bands, stage))
        return self.scores[bands[:len(bands) if stage is None else stage + 1]]


def _space(stages=4, candidates=(28, 36, 46, 54)):
    return SearchSpace.create(resolution=64, stages=stages, candidates=list(candidates), tolerance=0.5)


def _stage_costs(budget, space, bands, stages):
    schedule = budget.build(bands, space)
    return sum(s.epochs * (s.band / 64) ** 2 for s in schedule.stages if s.index in stages)


# ------------------------------------------------------------------ the early scoring rule
def test_each_stage_is_scored_a_stage_later_against_the_reference_at_equal_compute():
    scores = {
        (64, 64): 50.0, (28, 64): 49.0, (36, 64): 49.6,          # stage 0: 28 loses 1.0, 36 only 0.4
        (36, 64, 64): 60.0, (36, 36, 64): 59.4, (36, 46, 64): 60.2,  # stage 1: 36 loses 0.6, 46 wins
        (36, 46, 64, 64): 70.0, (36, 46, 46, 64): 71.0,           # stage 2, scored at the end (stage 3)
        (36, 46, 46, 46): 70.6,                                    # stage 3: 0.4 below its reference
    }
    proxy, budget, space = PrefixProxy(scores), ComputeBudget(12, baseline_budget=18), _space()
    result = sequential_search(space, budget, proxy, score_after=1)
    assert result.bands == (36, 46, 46, 46)
    assert result.top1 == 70.6 and result.scored_at == 3 and result.reference_top1 == 50.0
    assert proxy.calls == [
        ((64, 64, 64, 64), 1), ((28, 64, 64, 64), 1), ((36, 64, 64, 64), 1),
        ((36, 64, 64, 64), 2), ((36, 36, 64, 64), 2), ((36, 46, 64, 64), 2),
        ((36, 46, 64, 64), None), ((36, 46, 46, 64), None),  # t = min(k + 1, S - 1): stage 2 is scored at the end
        ((36, 46, 46, 46), None),  # stage 3's reference is stage 2's accepted run: not rerun
    ]
    runs = [t for t in result.trials if t.status == "run"]
    assert [(t.stage, t.band, t.role, t.accepted, t.scored_at) for t in runs] == [
        (0, 64, "reference", False, 1), (0, 28, "candidate", False, 1), (0, 36, "candidate", True, 1),
        (1, 64, "reference", False, 2), (1, 36, "candidate", False, 2), (1, 46, "candidate", True, 2),
        (2, 64, "reference", False, 3), (2, 46, "candidate", True, 3), (3, 46, "candidate", True, 3)]
    assert [t.reference_top1 for t in runs if t.role == "candidate"] == [50.0, 50.0, 60.0, 60.0, 70.0, 71.0]
    # what each trained: a candidate continues from the accepted path at the end of stage k - 1;
    # a reference extends the accepted path from where it was last scored
    trained = [range(0, 2), range(0, 2), range(0, 2), range(2, 3), range(1, 3), range(1, 3), range(3, 4),
               range(2, 4), range(3, 4)]
    assert [t.cost for t in runs] == pytest.approx(
        [_stage_costs(budget, space, t.bands, stages) for t, stages in zip(runs, trained)])
    assert result.cost == pytest.approx(sum(t.cost for t in runs))


def test_scoring_at_the_end_keeps_the_old_order_and_reuses_the_prefix():
    proxy = PrefixProxy({(64,) * 4: 80.0, (28, 64, 64, 64): 80.0, (28, 28, 64, 64): 79.0, (28, 36, 64, 64): 79.6,
                         (28, 36, 36, 64): 80.0, (28, 36, 36, 36): 75.0, (28, 36, 36, 46): 75.0,
                         (28, 36, 36, 54): 75.0})
    budget, space = ComputeBudget(12, baseline_budget=18), _space()
    result = sequential_search(space, budget, proxy)  # score_after None: every run to the end, as before
    assert result.bands == (28, 36, 36, 64) and all(stage is None for _, stage in proxy.calls)
    assert len({bands for bands, _ in proxy.calls}) == len(proxy.calls)  # no schedule runs twice
    first, *later = [t for t in result.trials if t.status == "run"]
    assert first.cost == pytest.approx(_stage_costs(budget, space, first.bands, range(4)))
    # the candidate of stage k trains stages k..S-1 only: stages 0..k-1 are the accepted path's
    assert [t.cost for t in later] == pytest.approx(
        [_stage_costs(budget, space, t.bands, range(t.stage, 4)) for t in later])


@pytest.mark.parametrize("stages,n,after", [(3, 2, 0), (4, 2, 1), (4, 2, 2), (5, 2, None)])
def test_max_proxy_stages_bounds_every_outcome(stages, n, after):
    """Every stage costs one unit here (bands 16 and 32 at R = 64 and E = S divide a share
    exactly), so a trial's cost is the number of stages it trained."""
    sp = SearchSpace.create(resolution=64, stages=stages, candidates=[16, 32][:n])
    budget = ComputeBudget(float(stages), baseline_budget=18)
    worst = 0.0
    for pattern in itertools.product([70.0, 80.0], repeat=stages * n + 1):
        table = iter(pattern)
        seen: dict[tuple[int, ...], float] = {}

        def score(schedule, stage=None, table=table, seen=seen):
            key = tuple(s.band for s in schedule.stages)[:None if stage is None else stage + 1]
            return seen.setdefault(key, 80.0 if not seen else next(table, 80.0))

        result = sequential_search(sp, budget, score, score_after=after)
        spent = result.cost
        assert spent == pytest.approx(round(spent))  # whole stages
        worst = max(worst, spent)
    assert worst <= max_proxy_stages(sp, after)
    assert max_proxy_stages(sp, after) <= max_proxy_runs(sp) * stages  # never above from scratch


# ----------------------------------------------------------------- the LR over the prefix
def test_search_schedules_share_the_learning_rate_of_their_common_stages():
    space, budget = _space(), ComputeBudget(12, baseline_budget=18)
    a, b = budget.build([28, 28, 64, 64], space), budget.build([28, 46, 64, 64], space)
    assert a.total_compute != b.total_compute and a.lr_compute == b.lr_compute == 12.0
    first = a.stages[0]
    for epoch in range(first.epochs + 1):
        assert a.compute_fraction(epoch) == b.compute_fraction(epoch)
    assert a.warmup_fraction(1.0) == b.warmup_fraction(1.0) == 1 / 12
    own = [Curriculum.from_dict({k: v for k, v in c.to_dict().items() if k != "lr_compute"}) for c in (a, b)]
    assert own[0].compute_fraction(first.epochs) != own[1].compute_fraction(first.epochs)  # what lr_compute fixes
    assert WallClockBudget(60.0, dict.fromkeys((28, 36, 46, 54, 64), 1.0)).build([28] * 4, space).lr_compute is None


def test_lr_compute_round_trips_and_a_budget_override_drops_it(tmp_path):
    space = _space()
    cur = ComputeBudget(12, baseline_budget=18).build([28, 36, 64, 64], space)
    path = tmp_path / "schedule.yaml"
    path.write_text(schedule_yaml(cur))
    back = Curriculum.from_file(path)
    assert back == cur and back.lr_compute == 12.0 and "lr_compute: 12.0" in path.read_text()
    assert Curriculum.from_file(path, budget=40).lr_compute is None  # a new budget spans its own compute
    assert "lr_compute" not in Curriculum.preset("etpp", budget=12, resolution=64).to_dict()  # fingerprints hold


# ---------------------------------------------------------- prefix reuse, bit for bit
def _state_model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_a_continued_candidate_trains_what_a_run_from_scratch_trains(demo_root, tmp_path, monkeypatch):
    data = plan_proxy_data(demo_root, tmp_path / "search", fraction=0.5, seed=0, val_split=None)
    space = SearchSpace.create(resolution=32, stages=3, candidates=[16, 24])
    budget = ComputeBudget(3, baseline_budget=4)
    accepted, candidate = budget.build([16, 24, 32], space), budget.build([16, 32, 32], space)
    assert accepted.total_compute != candidate.total_compute  # only the LR span makes their stage 0 alike
    cfg = TrainConfig(model="test_resnet", resolution=32, batch_size=16, threads=2, seed=0)
    proxy = TrainerProxy(cfg, data, tmp_path / "search" / "runs")
    proxy(accepted)
    continued_from = []
    readdress = etpp_dali.search.segments.readdress_state
    monkeypatch.setattr(etpp_dali.search.segments, "readdress_state",
                        lambda source, *args: (continued_from.append(source), readdress(source, *args)))
    top1 = proxy(candidate)
    assert continued_from == [proxy._state(accepted, 0, 0)]  # it continued from the accepted run's stage 0
    scratch = train(proxy._config(cfg, candidate, tmp_path / "scratch"))  # `etpp train`'s own trainer
    assert top1 == scratch["top1"]
    ours, theirs = _state_model(proxy._state(candidate, 0, 2)), _state_model(tmp_path / "scratch" / "last.pt")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    proxy.keep_states(candidate, range(1, 3))
    assert not proxy._state(candidate, 0, 0).exists() and proxy._state(candidate, 0, 2).exists()
    proxy.keep_states()
    assert not list((tmp_path / "search" / "runs").rglob("*.pt"))


# ------------------------------------------------------------------------- the cost report
def test_cost_is_printed_before_and_after_as_training_runs():
    space, budget = _space(stages=10), ComputeBudget(12, baseline_budget=18)
    plan = _plan(space, budget, 0.25, 2, 3, 1)
    assert plan["max_stages"] == 10 + 14 * 2 and plan["max_training_runs"] == pytest.approx(1.9)
    assert "1.9 x one training run of the budget" in plan["text"] and "3 already done" in plan["text"]
    assert "at most 28 proxy runs (14 schedules x 2 seed(s)), each about 0.25 x 12 = 3" in plan["text"]
    assert "7 x one training run" in plan["text"]  # from scratch: 28 runs on a quarter of the data set
    assert _plan(space, budget, 0.25, 2, 0, None)["max_stages"] == 14 * 10  # at the end: no saving bound

    scores = {(64, 64): 50.0}
    proxy = PrefixProxy(scores)
    scores.update({(28,) * (k + 1) + (64,) * min(1, 9 - k): 50.0 for k in range(10)})
    scores.update({(28,) * k + (64,) * min(2, 10 - k): 50.0 for k in range(1, 10)})
    result = sequential_search(space, budget, proxy, score_after=1)
    assert result.bands == (28,) * 10
    cost = _cost(result, budget, 0.25, 2, 123.4)
    assert cost["proxy"] == pytest.approx(result.cost * 0.5, abs=1e-4)
    assert cost["training_runs"] == pytest.approx(result.cost * 0.5 / 12, abs=1e-4)
    assert f"{cost['training_runs']:.3g} x one training run of the budget; 123 s of wall-clock" in cost["text"]
    rows = trial_rows(result.trials, 0.25, 2)
    assert rows[-1]["cumulative_proxy_cost"] == pytest.approx(cost["proxy"], abs=1e-2)
    wall = WallClockBudget(60.0, dict.fromkeys((28, 36, 46, 54, 64), 1.0))
    assert "(2.06 x the --wall-clock-budget)" in _cost(result, wall, 0.25, 2, 123.4)["text"]
