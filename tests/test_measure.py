"""Know the speed-up before training: the prediction arithmetic on known rates, the timing
functions on a tiny model and data set, and `etpp schedule --measure`."""

import json

import pytest
from click.testing import CliRunner

from etpp_dali.cli import main
from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.train.measure import (
    MeasureError,
    Rates,
    measure_loader_rate,
    measure_schedule,
    measure_step_rate,
    overlap_for,
    predict_schedule_time,
    seconds_per_epoch,
)

pytest.importorskip("nvidia.dali")


def two_stages(replay: int = 1) -> Curriculum:
    """10 data epochs at 32 then 2 at 64 (R = 64), against a 4-epoch baseline."""
    return Curriculum([StageSpec(32, 0.0, 10 / 12, replay=replay), StageSpec(64, 5.0, 2 / 12)], budget=12,
                      resolution=64, split="epochs", baseline_budget=4)


STEP = {(32, 50): 400.0, (64, 50): 100.0, (32, 100): 500.0}
LOADER = {32: 200.0, 64: 250.0}


def test_prediction_on_a_cpu_adds_model_and_loader():
    p = predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                              overlap="sum")
    s0, s1 = p["stages"]
    assert s0["images"] == 10_000 and s0["model_s"] == pytest.approx(25.0) and s0["loader_s"] == pytest.approx(50.0)
    assert s0["predicted_s"] == pytest.approx(75.0)
    assert s1["predicted_s"] == pytest.approx(2000 / 100 + 2000 / 250)
    assert p["predicted_s"] == pytest.approx(75.0 + 28.0)
    assert p["baseline"]["predicted_s"] == pytest.approx(4000 / 100 + 4000 / 250)
    assert p["wall_speedup"] == pytest.approx(56.0 / 103.0)
    assert p["model_only_speedup"] == pytest.approx(40.0 / (25.0 + 20.0))  # a free loader: the model's seconds
    assert p["compute_speedup"] == pytest.approx(two_stages().speedup())
    other = predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                                  overlap="sum", baseline_budget=8)
    assert other["baseline"]["predicted_s"] == pytest.approx(2 * p["baseline"]["predicted_s"])
    assert other["compute_speedup"] == pytest.approx(2 * p["compute_speedup"])
    # the loader alone (200/s) is slower than the model alone (400/s) at 32: echo 2 cures it
    assert s0["loader_bound"] and s0["cure_echo"] == 2
    assert not s1["loader_bound"] and s1["cure_echo"] is None
    assert p["loader_bound_stages"] == [0]


def test_prediction_on_a_gpu_takes_the_longer_and_echo_and_batches_apply():
    p = predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                              overlap="max")
    assert p["stages"][0]["predicted_s"] == pytest.approx(50.0)  # the loader's 50 s hide the model's 25
    p = predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                              stage_batches=[100, 50], echo=[2, 1], overlap="max")
    s0 = p["stages"][0]
    assert s0["batch"] == 100 and s0["echo"] == 2
    assert s0["model_s"] == pytest.approx(20.0) and s0["loader_s"] == pytest.approx(25.0)
    assert s0["loader_bound"] and s0["cure_echo"] == 3  # 500 / 200 -> 3
    with pytest.raises(KeyError, match="no measured model rate"):
        predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                              stage_batches=[64, 50])
    with pytest.raises(ValueError, match="one value per stage"):
        predict_schedule_time(two_stages(), train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50,
                              echo=[1])


def test_a_stage_batch_in_the_schedule_is_the_default():
    cur = Curriculum([StageSpec(32, 0.0, 10 / 12, batch=100), StageSpec(64, 5.0, 2 / 12)], budget=12,
                     resolution=64, split="epochs", baseline_budget=4)
    p = predict_schedule_time(cur, train_images=1000, step_rates=STEP, loader_rates=LOADER, batch=50)
    assert [s["batch"] for s in p["stages"]] == [100, 50]
    assert p["stages"][0]["model_s"] == pytest.approx(20.0)  # 10,000 images at 500/s


def test_replay_is_the_default_echo():
    p = predict_schedule_time(two_stages(replay=2), train_images=1000, step_rates=STEP, loader_rates=LOADER,
                              batch=50)
    s0 = p["stages"][0]
    assert s0["echo"] == 2 and s0["images"] == 10_000  # 5 data epochs of 1000 images, each used twice
    assert s0["loader_s"] == pytest.approx(25.0)


def test_seconds_per_epoch_and_overlap_rule():
    assert seconds_per_epoch(train_images=1000, step_rate=400, loader_rate=200, overlap="sum") == pytest.approx(7.5)
    assert seconds_per_epoch(train_images=1000, step_rate=400, loader_rate=200, overlap="max") == pytest.approx(5.0)
    assert overlap_for("cpu") == "sum" and overlap_for("cuda") == "max" and overlap_for("cuda:1") == "max"
    with pytest.raises(ValueError, match="overlap"):
        seconds_per_epoch(train_images=1, step_rate=1, loader_rate=1, overlap="both")


def test_rates_round_trip():
    rates = Rates("cpu", "resnet10t", 1000, dict(STEP), dict(LOADER))
    back = Rates.from_dict(json.loads(json.dumps(rates.to_dict())))
    assert back == rates


def test_timing_functions_on_a_tiny_model_and_set(demo_root):
    rate = measure_step_rate("test_resnet", band=24, batch=8, steps=2, warmup=1, num_classes=4)
    assert 0 < rate < 1e6
    rate = measure_loader_rate(demo_root, band=24, resolution=32, batch=8, steps=3, warmup=1, threads=2)
    assert 0 < rate < 1e6
    with pytest.raises(MeasureError, match="--model 'no_such_model'"):
        measure_step_rate("no_such_model", band=24, batch=2)


def test_measure_schedule_times_every_band_and_the_baseline(demo_root):
    cur = Curriculum.preset("etpp", budget=4, resolution=32, baseline_budget=6)
    doc = measure_schedule(cur, model="test_resnet", data=demo_root, batch=8, device="cpu")
    bands = sorted({s.band for s in cur.stages} | {32})
    assert sorted(r["band"] for r in doc["rates"]["loader"]) == bands
    assert sorted(r["band"] for r in doc["rates"]["step"]) == bands
    assert doc["prediction"]["overlap"] == "sum" and len(doc["prediction"]["stages"]) == 10
    assert "wall-clock speed-up" in doc["text"] and "compute speed-up" in doc["text"]
    with pytest.raises(MeasureError, match="--measure needs --model"):
        measure_schedule(cur, model=None)


def test_schedule_measure_command(demo_root):
    args = ["schedule", "--budget", "4", "--resolution", "32", "--measure", "--model", "test_resnet",
            "--data", str(demo_root), "--batch-size", "8", "--device", "cpu", "--baseline-budget", "6"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "data epochs" in res.output and "predicted wall-clock per stage" in res.output
    assert "for the 6-epoch baseline at 32 px" in res.output and "of a 6-epoch baseline" in res.output
    res = CliRunner().invoke(main, args + ["--json"])
    doc = json.loads(res.output)
    assert doc["measure"]["prediction"]["wall_speedup"] > 0 and "text" not in doc["measure"]


@pytest.mark.parametrize("args,needle", [
    (["--measure"], "--measure needs --model"),
    (["--measure", "--model", "test_resnet", "--device", "tpu"], "--device tpu"),
    (["--measure", "--model", "test_resnet", "--data", "/no/such/dir"], "--data"),
])
def test_schedule_measure_bad_input(args, needle):
    res = CliRunner().invoke(main, ["schedule", "--resolution", "32", "--budget", "4", *args])
    assert res.exit_code != 0 and needle in res.output, res.output
    assert res.output.strip().count("\n") == 0


@pytest.mark.gpu
def test_measure_on_cuda_takes_the_longer_of_model_and_loader(demo_root):
    cur = Curriculum.preset("etpp", budget=4, resolution=32, baseline_budget=6)
    doc = measure_schedule(cur, model="test_resnet", data=demo_root, batch=8, device="cuda")
    assert doc["rates"]["device"].startswith("cuda") and doc["prediction"]["overlap"] == "max"
    assert all(r["images_per_s"] > 0 for r in doc["rates"]["step"] + doc["rates"]["loader"])
