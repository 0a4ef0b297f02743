"""The benchmark commands on tiny settings: every code path that runs on a CPU."""

import json

import pytest
from click.testing import CliRunner

from etpp_dali.cli import main

pytest.importorskip("nvidia.dali")


def invoke(*args):
    res = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_bench_op_writes_json_and_markdown(tmp_path):
    out = tmp_path / "op.json"
    text = invoke("op", "--bands", "8,24", "--input-size", "32", "--batch-size", "4", "--threads", "1",
                  "--json", str(out))
    doc = json.loads(out.read_text())
    assert doc["machine"]["cores"] >= 1 and len(doc["rows"]) == 4
    assert all(r["images_per_s"] > 0 for r in doc["rows"])
    assert out.with_suffix(".md").read_text().count("| cpu |") == 4 and "matmul" in text


def test_bench_crop_compares_exact_and_resize(demo_root, tmp_path):
    out = tmp_path / "crop.json"
    invoke("crop", "--data", str(demo_root), "--bands", "16", "--resolution", "32", "--batch-size", "8",
           "--rounds", "1", "--json", str(out))
    row = json.loads(out.read_text())["rows"][0]
    assert set(row["ratio_vs_resize"]) == {"fourier-matmul", "fourier-fft"}


def test_bench_loader_reports_every_loader(demo_root, tmp_path):
    out = tmp_path / "loader.json"
    png = tmp_path / "loader.png"
    invoke("loader", "--data", str(demo_root), "--bands", "16,32", "--resolution", "32", "--batch-size", "8",
           "--rounds", "1", "--steps", "1", "--json", str(out), "--plot", str(png))
    doc = json.loads(out.read_text())
    keys = {"band", "ours", "ours_resize", "reference", "decode_only", "ratio_vs_reference", "ratio_vs_decode"}
    assert [r["band"] for r in doc["bands"]] == [16, 32] and all(keys <= set(r) for r in doc["bands"])
    assert doc["peak_rss_mb_ours"] > 0 and doc["no_augment"]["decode_crop_resize_images_per_s"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_loader_rejects_bands_above_resolution(demo_root):
    res = CliRunner().invoke(main, ["bench", "loader", "--data", str(demo_root), "--bands", "64", "--resolution", "32"])
    assert res.exit_code != 0 and "must be <= --resolution 32" in res.output


def test_bench_train_etpp_against_baseline(demo_root, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: test_resnet\ndata: {demo_root}\nschedule: {{preset: etpp, budget: 2, resolution: 32, "
                      "baseline_budget: 3}\nbatch_size: 16\nlr: 2.0e-3\nwarmup_epochs: 0.2\nthreads: 2\n")
    out = tmp_path / "train.json"
    text = invoke("train", "--recipe", str(recipe), "--output", str(tmp_path / "runs"), "--json", str(out),
                  "--plot", str(tmp_path / "train.png"))
    doc = json.loads(out.read_text())
    runs = {r["run"]: r for r in doc["runs"]}
    assert runs["baseline"]["epochs"] == 3 and runs["etpp"]["schedule"].startswith("etpp")
    assert all(r["top1"] is not None and r["stall_by_stage"] for r in runs.values())
    assert doc["compute_speedup"] > 1 and "wall-clock speed-up" in text


def test_bench_device_errors_are_one_line():
    for args, needle in ((["op", "--device", "tpu"], "device = 'tpu' is unknown"),
                         (["op", "--device", "auto"], "name the device")):
        res = CliRunner().invoke(main, ["bench", *args])
        assert res.exit_code != 0 and needle in res.output and res.output.strip().count("\n") == 0
