import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import etpp_dali.train.distributed as distributed
from etpp_dali import __version__
from etpp_dali.cli import main
from etpp_dali.cli.options import command_line
from etpp_dali.cli.train import train as train_command
from etpp_dali.train.config import RecipeError, merge_recipe
from etpp_dali.train.distributed import torchrun_command


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_version_and_help_on_every_command():
    assert __version__ in run("--version").output
    for cmd in main.commands:
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output, cmd


def test_schedule_json_reference_numbers():
    res = run("schedule", "--preset", "etpp", "--family", "resnet", "--budget", "200", "--json")
    doc = json.loads(res.output)
    assert abs(doc["data_epochs"] - 454) <= 5
    assert abs(doc["speedup"] - 1.50) <= 0.02
    assert {"band", "magnitude", "replay", "epochs", "compute"} <= set(doc["stages"][0])
    assert "relative_compute" in doc


def test_schedule_table_and_plot(tmp_path):
    png = tmp_path / "s.png"
    res = run("schedule", "--preset", "et", "--plot", str(png))
    assert res.exit_code == 0
    assert "data epochs 300" in res.output and "speed-up 1.53x" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 100\nstages:\n  - {band: 999, magnitude: 1}\n")
    for args, needle in ((["--preset", str(bad)], "stages[0].band = 999"),
                         (["--preset", "nope"], "--preset 'nope'"),
                         (["--budget", "-1"], "budget = -1")):
        res = CliRunner().invoke(main, ["schedule", *args])
        assert res.exit_code != 0
        assert needle in res.output
        assert res.output.strip().count("\n") == 0


def test_check_data_exit_codes(hymenoptera, demo_root):
    res = CliRunner().invoke(main, ["check-data", str(hymenoptera)])
    assert res.exit_code == 1 and "imageNotFound.gif" in res.output
    assert res.output.count("problem") == 1
    res = CliRunner().invoke(main, ["check-data", str(demo_root)])
    assert res.exit_code == 0 and "clean" in res.output


def test_demo_data_command(tmp_path):
    res = run("demo-data", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "3",
              "--val-per-class", "1", "--size", "24")
    assert res.exit_code == 0
    assert len(list((tmp_path / "d" / "train").rglob("*.jpg"))) == 6


def test_schedule_table_shows_each_stages_batch_and_accumulation():
    args = ["schedule", "--resolution", "64", "--budget", "12", "--batch-size", "64", "--global-batch", "256"]
    res = run(*args, "--stage-batch", "auto")
    assert res.exit_code == 0 and "global batch 256 over 1 device(s)" in res.output
    rows = [line.split() for line in res.output.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 10]
    assert [(r[1], r[8], r[9]) for r in rows] == [("28", "256", "1")] * 2 + [("46", "128", "2")] * 4 + \
        [("64", "64", "4")] * 4
    doc = json.loads(run(*args, "--stage-batch", ",".join(["128"] * 2 + ["0"] * 8), "--devices", "2", "--json").output)
    assert [(s["batch"], s["accumulation"]) for s in doc["stages"]][:3] == [(128, 1), (128, 1), (64, 2)]
    assert doc["global_batch"] == 256 and doc["devices"] == 2


def test_schedule_and_train_batch_flags_are_one_line_errors(tmp_path):
    for args, needle in ((["schedule", "--batch-size", "64", "--global-batch", "256", "--stage-batch",
                           "48" + ",0" * 9],
                          "stage_batch[0]: a per-device batch of 48 on 1 device(s) does not divide the global "
                          "batch 256"),
                         (["schedule", "--stage-batch", "auto"], "need --batch-size"),
                         (["schedule", "--batch-size", "64", "--stage-batch", "big"], "--stage-batch 'big'"),
                         (["train", "--echo", "sometimes", "--output", str(tmp_path / "r")], "--echo 'sometimes'"),
                         (["train", "--stage-batch", "1,x", "--output", str(tmp_path / "r")], "--stage-batch '1,x'")):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0 and needle in res.output, res.output
        assert res.output.strip().count("\n") == 0


def test_a_schedule_file_keeps_its_budget_over_the_recipes(demo_root, tmp_path):
    # the recipe's budget (12) belongs to its etpp preset; a file given with --preset keeps its own
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nschedule: {preset: etpp, budget: 12, resolution: 32}\nbatch_size: 8\n")
    schedule = tmp_path / "s.yaml"
    schedule.write_text("budget: 3\nresolution: 32\nsplit: epochs\nstages:\n- {band: 16, magnitude: 0, share: 0.6667}\n"
                        "- {band: 32, magnitude: 5, share: 0.3333}\n")
    common = ["train", "--recipe", str(recipe), "--data", str(demo_root), "--preset", str(schedule), "--no-progress",
              "--threads", "1", "--val-every", "9"]
    for extra, epochs in (([], 3), (["--budget", "2"], 2)):
        out = tmp_path / f"run{epochs}"
        res = CliRunner().invoke(main, [*common, *extra, "--output", str(out)])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "summary.json").read_text())["epochs_done"] == epochs


def one_line_error(args, needle):
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and needle in res.output, res.output
    assert res.output.strip().count("\n") == 0, res.output


def test_help_of_every_bench_command():
    for cmd in main.commands["bench"].commands:
        res = run("bench", cmd, "--help")
        assert res.exit_code == 0 and f"Usage: main bench {cmd}" in res.output, cmd


def test_bench_commands_bad_flags_are_one_line_errors_naming_the_flag(tmp_path):
    (tmp_path / "runs" / "etpp").mkdir(parents=True)
    (tmp_path / "runs" / "etpp" / "last.pt").write_bytes(b"")
    cases = [(["op", "--backends", "matmul,xla"], "--backends: 'xla' is unknown"),
             (["op", "--bands", "8,x"], "--bands '8,x' is not a comma-separated list"),
             (["op", "--bands", "0"], "--bands '0' needs positive integers"),
             (["op", "--device", "auto"], "--device auto: name the device"),
             (["op", "--device", "tpu"], "--device tpu: device = 'tpu' is unknown"),
             (["crop", "--data", str(tmp_path / "missing")], "--data: "),
             (["crop", "--data", str(tmp_path), "--bands", "a"], "--bands 'a'"),
             (["loader", "--data", str(tmp_path), "--bands", "x"], "--bands 'x'"),
             (["loader", "--data", str(tmp_path), "--rounds", "0"], "--rounds 0: must be >= 1"),
             (["loader", "--data", str(tmp_path), "--loaders", "ours,nope"], "--loaders nope: unknown"),
             (["loader", "--data", str(tmp_path), "--magnitude", "11"], "--magnitude 11"),
             (["train", "--data", str(tmp_path / "missing")], f"--data {tmp_path / 'missing'}: no such folder"),
             (["train", "--val-every", "0"], "--val-every 0: must be >= 1"),
             (["train", "--recipe", "nope", "--output", str(tmp_path / "o")], "--recipe 'nope': no such file"),
             (["train", "--batch-size", "0", "--output", str(tmp_path / "o")], "--batch-size 0 must be"),
             (["train", "--output", str(tmp_path / "runs")], "holds runs already")]
    if not torch.cuda.is_available():
        cases += [(["op", "--device", "cuda"], "--device cuda: "), (["loader", "--data", str(tmp_path), "--device",
                                                                      "cuda"], "--device cuda: ")]
    for args, needle in cases:
        one_line_error(["bench", *args], needle)
    assert not (tmp_path / "o").exists()  # nothing trained before the error


def test_bench_op_runs_on_a_tiny_batch(tmp_path):
    out = tmp_path / "op.json"
    res = run("bench", "op", "--backends", "matmul", "--bands", "8", "--input-size", "16", "--batch-size", "2",
              "--threads", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["device"], row["backend"], row["input"], row["band"], row["batch"]) == ("cpu", "matmul", 16, 8, 2)
    assert row["images_per_s"] > 0
    assert "| cpu | matmul |" in res.output and f"results written to {out}" in res.output


def write_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nschedule: {preset: etpp, budget: 12, resolution: 32}\nbatch_size: 8\n"
                      "lr: 0.001\n")
    return recipe


def test_merge_recipe_flags_override_keys_and_none_means_not_given(tmp_path):
    recipe = write_recipe(tmp_path)
    cfg = merge_recipe(str(recipe), {"model": "resnet18", "batch_size": None, "lr": None, "budget": 6.0,
                                     "ema": None, "progress": False})
    assert (cfg.model, cfg.batch_size, cfg.lr, cfg.budget, cfg.resolution) == ("resnet18", 8, 0.001, 6.0, 32)
    assert (cfg.ema, cfg.progress, cfg.name, cfg.output) == (False, False, "r", str(Path("runs") / "r"))
    assert merge_recipe(str(recipe), {"output": str(tmp_path / "o")}).output == str(tmp_path / "o")


def test_merge_recipe_a_schedule_file_keeps_its_budget_unless_budget_is_given(tmp_path):
    recipe = write_recipe(tmp_path)
    schedule = tmp_path / "s.yaml"
    schedule.write_text("budget: 3\nresolution: 32\nsplit: epochs\nstages:\n- {band: 16, magnitude: 0}\n")
    assert merge_recipe(str(recipe), {"preset": str(schedule)}).budget is None  # the file's 3 governs
    assert merge_recipe(str(recipe), {"preset": str(schedule), "budget": None}).curriculum().budget == 3
    assert merge_recipe(str(recipe), {"preset": str(schedule), "budget": 2.0}).budget == 2.0
    assert merge_recipe(str(recipe), {"preset": "et"}).budget == 12  # a preset takes the recipe's budget


def test_merge_recipe_without_a_recipe_is_the_demo_or_data_named_after_its_folder(tmp_path):
    demo = merge_recipe(None, {})
    assert (demo.name, demo.data, demo.output) == ("demo", "demo", str(Path("runs") / "demo"))
    data = tmp_path / "flowers"
    cfg = merge_recipe(None, {"data": str(data), "val_split": 0.2})
    assert (cfg.name, cfg.data, cfg.val_split, cfg.output) == ("flowers", str(data), 0.2, str(Path("runs") / "flowers"))
    assert cfg.model == "resnet10t" and cfg.budget is None  # TrainConfig's defaults, not the demo recipe's
    named = merge_recipe(str(write_recipe(tmp_path)), {"data": str(data)})
    assert (named.name, named.model, named.data) == ("r", "test_resnet", str(data))  # a recipe keeps its name


def test_merge_recipe_refuses_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(RecipeError, match="bad setting: colour is not a TrainConfig field"):
        merge_recipe(None, {"colour": "red"})
    with pytest.raises(RecipeError, match="--val-every 0 must be >= 1"):
        merge_recipe(None, {"val_every": 0})
    with pytest.raises(RecipeError, match="--recipe 'nope': no such file or recipe"):
        merge_recipe("nope", {})


def test_nproc_relaunches_under_torchrun_with_the_parsed_flags_not_argv(monkeypatch, tmp_path):
    launched = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "run_under_torchrun", lambda nproc, args: launched.append((nproc, args)) or 0)
    data, out = str(tmp_path / "d"), str(tmp_path / "o")
    res = CliRunner().invoke(main, ["train", "--data", data, "--nproc", "2", "--budget", "1", "--channels-last",
                                    "--echo", "2", "--stage-batch", "auto", "--no-progress", "--output", out])
    assert res.exit_code == 0, res.output
    expected = ["--data", data, "--budget", "1.0", "--stage-batch", "auto", "--echo", "2", "--channels-last",
                "--output", out, "--no-progress"]
    assert launched == [(2, expected)]
    assert not Path(out).exists()  # the parent trains nothing itself
    given = train_command.make_context("train", list(expected)).params
    assert {k: v for k, v in given.items() if v not in (None, False)} == {
        "data": data, "budget": 1.0, "stage_batch": "auto", "echo": "2", "channels_last": True, "output": out,
        "no_progress": True}
    assert torchrun_command(2, expected) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node=2", "-m", "etpp_dali", "train", *expected]
    with pytest.raises(RecipeError, match="--nproc"):
        torchrun_command(2, ["--nproc", "2"])
    one_line_error(["train", "--nproc", "2", "--echo", "sometimes"], "--echo 'sometimes'")  # before any launch
    assert len(launched) == 1


def test_a_process_torchrun_started_does_not_launch_again(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.needs_launch(2)
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.needs_launch(2) and not distributed.needs_launch(1) and not distributed.needs_launch(None)


def test_command_line_writes_back_the_options_given_in_the_order_asked():
    args = ["--model", "resnet18", "--lr", "0.002", "--ema", "--seed", "0"]
    params = train_command.make_context("train", args).params
    assert command_line(params, train_command) == ["--model", "resnet18", "--lr", "0.002", "--ema", "--seed", "0"]
    assert command_line(params, train_command, ["seed", "model", "data"]) == ["--seed", "0", "--model", "resnet18"]


@pytest.mark.parametrize("args, shown", [
    (["schedule", "--batch-size", "64", "--stage-batch", "auto"], ""),
    (["schedule", "--mae-patch", "16", "--family", "deit"], "visible"),  # the MAE schedule's token columns
])
def test_the_cli_and_etpp_schedule_import_neither_torch_nor_dali(args, shown):
    code = ("import sys; from click.testing import CliRunner; from etpp_dali.cli import main; "
            f"res = CliRunner().invoke(main, {args!r}); "
            f"assert res.exit_code == 0 and {shown!r} in res.output, res.output; "
            "bad = [m for m in ('torch', 'nvidia.dali', 'timm') if m in sys.modules]; "
            "sys.exit(f'imports {bad}' if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
