import json

from click.testing import CliRunner

from etpp_dali import __version__
from etpp_dali.cli import main


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
    for args, needle in ((["schedule", "--batch-size", "64", "--global-batch", "256", "--stage-batch", "48" + ",0" * 9],
                          "stage_batch[0]: a per-device batch of 48 on 1 device(s) does not divide the global batch 256"),
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
