"""The benchmark commands on tiny settings: every code path that runs on a CPU, and the loader
benchmark's isolation record checked from its JSON."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from etpp_dali.bench.loader import LoaderBenchSettings, isolation_violations, plan_rounds, sample_indices
from etpp_dali.bench.loaders import PEERS, WindowSpec, window_module, write_sample
from etpp_dali.bench.report import echo_bound
from etpp_dali.cli import main
from etpp_dali.data.demo import DemoSpec, write_demo_dataset
from etpp_dali.data.sources import open_source

pytest.importorskip("nvidia.dali")


def invoke(*args, status=0):
    res = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    assert res.exit_code == status, res.output + res.stderr
    return res


def one_line_error(args, needle):
    res = CliRunner().invoke(main, ["bench", *args])
    assert res.exit_code != 0 and needle in res.output, res.output
    assert res.output.strip().count("\n") == 0, res.output


@pytest.fixture(scope="module")
def thousand_images(tmp_path_factory):
    """About 1,000 small JPEGs in 10 classes (no val/)."""
    return write_demo_dataset(tmp_path_factory.mktemp("bench") / "set",
                              DemoSpec(classes=10, train_per_class=100, val_per_class=0, size=48))


def test_bench_op_writes_json_and_markdown(tmp_path):
    out = tmp_path / "op.json"
    text = invoke("op", "--bands", "8,24", "--input-size", "32", "--batch-size", "4", "--threads", "1",
                  "--json", str(out)).output
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


def _overlaps(windows):
    """Recomputed from the raw record: (window, other process) pairs alive at the same time."""
    return [(w["pid"], o["process"]["pid"]) for w in windows if not w["error"] for o in windows
            if o["process"]["pid"] != w["process"]["pid"]
            and o["process"]["spawned"] < w["window_end"] and o["process"]["group_gone"] > w["window_start"]]


@pytest.mark.slow
def test_bench_loader_times_each_loader_alone(thousand_images, tmp_path):
    out, png = tmp_path / "loader.json", tmp_path / "loader.png"
    res = invoke("loader", "--data", str(thousand_images), "--bands", "24", "--resolution", "32", "--batch-size", "16",
                 "--rounds", "2", "--warmup", "1", "--min-batches", "3", "--min-seconds", "0.3", "--files", "500",
                 "--json", str(out), "--plot", str(png))
    doc = json.loads(out.read_text())
    windows = doc["windows"]
    # every loader measured in both rounds, in alternating order, each window in its own process
    assert not doc["errors"] and doc["images"] == 1000 and doc["sample_files"] == 500
    assert set(doc["results"]) == {"ours", "ours_resize", "ours_no_augment", "reference", "timm", "dali", "decode"}
    assert all(len(e["rounds"]) == 2 and e["min"] <= e["median"] <= e["max"]
               for per_band in doc["results"].values() for e in per_band.values())
    order = [[(w["loader"], w["band"]) for w in windows if w["round"] == r] for r in (0, 1)]
    assert order[1] == order[0][::-1]
    assert len({w["process"]["pid"] for w in windows}) == len(windows) == 14
    # the isolation record: no window overlapped another loader's process or its workers ...
    assert doc["isolation"] == {"checked": True, "violations": []} and _overlaps(windows) == []
    assert all(w["other_run_processes"] == [] for w in windows)
    # ... and the record does see workers where there are some, with their CPU time
    for w in windows:
        workers = 2 if w["loader"] in ("reference", "timm") else 0
        assert w["workers_alive_start"] == w["workers_alive_end"] == workers, w
        assert (w["cpu_s_workers"] > 0) == (workers > 0) and w["cpu_s_process"] >= 0
        assert w["process"]["spawned"] < w["window_start"] < w["window_end"] <= w["process"]["group_gone"]
        assert w["images"] == 16 * w["batches"] and w["batches"] >= 3
    assert set(doc["ratios"]["24"]) == set(PEERS)
    table = out.with_suffix(".md").read_text()
    assert "ET++ reference" in table and "timm create_loader" in table and "isolation checked" in table
    assert png.read_bytes()[:4] == b"\x89PNG" and "round 2/2 ours B=24" in res.stderr


@pytest.mark.parametrize("loader,family_module,absent", [("decode", "etpp_dali.bench.dali_window", "timm"),
                                                          ("reference", "etpp_dali.bench.torch_window", "nvidia.dali")])
def test_a_window_started_as_the_window_module_runs_as_its_loaders_module(demo_root, tmp_path, loader,
                                                                           family_module, absent):
    """``python -m etpp_dali.bench.window SPEC RESULT`` times the loader in the window module of its
    family, in the same process (its pid is the one started); that module holds none of the other
    family's libraries, so a window's memory is its own loader's."""

    assert window_module(loader) == family_module
    held = subprocess.run([sys.executable, "-c", f"import sys, {family_module}; print({absent!r} in sys.modules)"],
                          capture_output=True, text=True, timeout=300)
    assert held.stdout.strip() == "False", held.stderr[-2000:]
    source = open_source(demo_root, "train")
    sample = write_sample(tmp_path / "sample.json", source, range(len(source)))
    spec = WindowSpec(loader=loader, band=32, round=0, sample=str(sample), batch=8, threads=1, magnitude=5.0,
                      resolution=32, device="cpu", warmup=0, min_batches=2, min_seconds=0.0)
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    proc = subprocess.Popen([sys.executable, "-m", "etpp_dali.bench.window", str(spec_path), str(result_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-2000:]
    record = json.loads(result_path.read_text())
    assert record["error"] is None and record["loader"] == loader and record["pid"] == proc.pid
    assert record["images"] == 8 * record["batches"] and record["batches"] >= 2 and record["images_per_s"] > 0


def test_isolation_check_flags_overlapping_windows():
    def window(pid, spawned, start, end, gone):
        return {"loader": f"l{pid}", "band": 96, "round": 0, "pid": pid, "error": None, "window_start": start,
                "window_end": end, "other_run_processes": [],
                "process": {"pid": pid, "spawned": spawned, "group_gone": gone}}

    alone = [window(1, 0, 2, 5, 6), window(2, 6.5, 8, 9, 10)]
    assert isolation_violations(alone) == []
    late_workers = [window(1, 0, 2, 5, 6), window(2, 4, 8, 9, 10)]  # 2 started before 1's window ended
    assert len(isolation_violations(late_workers)) == 1 and "overlapped l2@96" in isolation_violations(late_workers)[0]
    seen = [dict(window(1, 0, 2, 5, 6), other_run_processes=[77])]
    assert "other benchmark processes" in isolation_violations(seen)[0]


def test_loader_plan_and_sample():
    s = LoaderBenchSettings(bands=[96, 160], loaders=["ours", "decode"], rounds=3)
    rounds = plan_rounds(s)
    assert rounds[0] == [("decode", None), ("ours", 96), ("ours", 160)] and rounds[1] == rounds[0][::-1]
    assert rounds[2] == rounds[0]
    idx = sample_indices(100_000, files=300, batch=64, seed=0)
    assert len(set(idx.tolist())) == 300 and len(idx) >= 64 * 64
    small = sample_indices(200, files=2000, batch=64, seed=0)
    assert sorted(set(small.tolist())) == list(range(200)) and len(small) >= 64 * 64


@pytest.mark.slow
def test_bench_loader_breakdown_stages(thousand_images, tmp_path):
    out = tmp_path / "stages.json"
    invoke("loader", "--data", str(thousand_images), "--bands", "16,32", "--resolution", "32", "--batch-size", "16",
           "--rounds", "1", "--loaders", "ours", "--breakdown", "--min-batches", "2", "--min-seconds", "0",
           "--files", "200", "--json", str(out))
    doc = json.loads(out.read_text())
    stages = [(r["band"], r["stage"]) for r in doc["breakdown"]]
    expected = ["stage_decode", "stage_resize", "stage_warp", "stage_colour", "stage_crop", "ours"]
    assert stages == [(b, s) for b in (16, 32) for s in expected]
    assert all(r["ms_per_image"] > 0 for r in doc["breakdown"])
    assert "hand-off to torch" in out.with_suffix(".md").read_text()
    assert "echo bound at B = " in out.with_suffix(".md").read_text()


def test_echo_bound_is_what_saving_the_decode_allows():
    assert echo_bound(1.0, 0.0, 4) == 1.0  # nothing to save
    assert echo_bound(1.0, 0.5, 2) == pytest.approx(1 / 0.75)
    assert echo_bound(1.38, 0.48, 4) == pytest.approx(1.38 / (0.90 + 0.12))  # the photos' breakdown: 1.35x


@pytest.mark.slow
def test_bench_loader_reports_a_crashed_loader(demo_root, tmp_path, monkeypatch):
    """OpenCV broken for the benchmark's processes: our loader (its warp uses OpenCV) crashes in
    its process; it is reported by name with its error, and decoding's figures are still written.
    (cv2 imports, as every window imports it, and fails when used: only our warp uses it.)"""
    broken = tmp_path / "broken" / "cv2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("def __getattr__(name):\n"
                                        "    if name.startswith('__'):\n"  # what introspection asks of any module
                                        "        raise AttributeError(name)\n"
                                        "    raise RuntimeError(f'cv2 is broken on purpose (cv2.{name})')\n")
    monkeypatch.setenv("PYTHONPATH", f"{broken.parent}:" + __import__("os").environ.get("PYTHONPATH", ""))
    out = tmp_path / "crash.json"
    res = invoke("loader", "--data", str(demo_root), "--bands", "32", "--resolution", "32", "--batch-size", "8",
                 "--rounds", "1", "--loaders", "ours,decode", "--min-batches", "2", "--min-seconds", "0",
                 "--json", str(out), status=1)
    doc = json.loads(out.read_text())
    assert [e["loader"] for e in doc["errors"]] == ["ours"] and "cv2 is broken on purpose" in doc["errors"][0]["error"]
    assert doc["results"]["decode"]["all"]["median"] > 0 and "ours" not in doc["results"]
    assert "FAILED: ours at B = 32" in res.output and "cv2 is broken" in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--data", "/no/such/folder"], "--data: /no/such/folder: no such path"),
    (["--bands", "64", "--resolution", "32"], "--bands 64: every band must be <= --resolution 32"),
    (["--rounds", "0"], "--rounds 0: must be >= 1"),
    (["--min-batches", "0"], "--min-batches 0: must be >= 1"),
    (["--magnitude", "4.5"], "--magnitude 4.5: give a whole number"),
    (["--loaders", "ours,fast"], "--loaders fast: unknown"),
])
def test_bench_loader_bad_input_is_one_line(demo_root, args, needle):
    one_line_error(["loader", "--data", str(demo_root), *args], needle)


def test_bench_loader_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(["loader", "--data", str(tmp_path / "empty")], "--data: ")


@pytest.mark.gpu
def test_bench_loader_on_cuda_uses_the_mixed_decoder(thousand_images, tmp_path):
    out = tmp_path / "cuda.json"
    invoke("loader", "--data", str(thousand_images), "--bands", "32", "--resolution", "32", "--batch-size", "16",
           "--rounds", "1", "--min-batches", "3", "--min-seconds", "0", "--device", "cuda", "--json", str(out))
    doc = json.loads(out.read_text())
    assert not doc["errors"] and doc["isolation"]["violations"] == []
    for w in doc["windows"]:
        assert w["decoder"] == ("PIL" if w["loader"] in ("reference", "timm") else "mixed")
        assert w["output_device"].startswith("cuda")


def test_bench_train_etpp_against_baseline(demo_root, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"model: test_resnet\ndata: {demo_root}\nschedule: {{preset: etpp, budget: 2, resolution: 32, "
                      "baseline_budget: 3}\nbatch_size: 16\nlr: 2.0e-3\nwarmup_epochs: 0.2\nthreads: 2\n")
    out = tmp_path / "train.json"
    text = invoke("train", "--recipe", str(recipe), "--output", str(tmp_path / "runs"), "--json", str(out),
                  "--plot", str(tmp_path / "train.png")).output
    doc = json.loads(out.read_text())
    runs = {r["run"]: r for r in doc["runs"]}
    assert runs["baseline"]["epochs"] == 3 and runs["etpp"]["schedule"].startswith("etpp")
    for r in runs.values():
        assert r["top1"] is not None and r["train_s"] > 0 and r["outside_training_s"] > 0
        assert r["stages"] and all(0 <= s["loader_share"] <= 1 and s["images_per_s"] > 0 for s in r["stages"])
    assert [len(doc["curves"][k]) for k in ("etpp", "baseline")] == [runs["etpp"]["epochs"], 3]
    assert runs["baseline"]["time_to_baseline_top1_s"] is not None
    assert doc["compute_speedup"] > 1 and "wall-clock speed-up" in text and "loader's share" in text
    assert (tmp_path / "train.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_train_bad_input_is_one_line(tmp_path):
    one_line_error(["train", "--data", str(tmp_path / "missing")], "--data")
    one_line_error(["train", "--val-every", "0"], "--val-every 0")


def test_bench_device_errors_are_one_line():
    for args, needle in ((["op", "--device", "tpu"], "device = 'tpu' is unknown"),
                         (["op", "--device", "auto"], "name the device")):
        one_line_error(args, needle)


def test_gpu_check_stops_with_the_reason_when_dali_wheels_are_missing(tmp_path):
    """bench/gpu_check.sh on a machine without DALI (here: an import of nvidia.dali that fails):
    a missing or incomplete wheel folder stops it at once, naming what is missing."""
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    no_dali = tmp_path / "no-dali" / "nvidia"
    (no_dali / "dali").mkdir(parents=True)
    (no_dali / "__init__.py").write_text("")
    (no_dali / "dali" / "__init__.py").write_text("raise ImportError('no DALI on this machine')\n")
    env = {**os.environ, "PYTHONPATH": f"{no_dali.parent}:{os.environ.get('PYTHONPATH', '')}"}
    env.pop("OUT", None)
    partial = tmp_path / "wheels"
    partial.mkdir()
    (partial / "nvidia_dali_cuda120-2.4.0-py3-none-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (partial / "six-1.17.0-py2.py3-none-any.whl").write_bytes(b"")
    for args, needle in (([], "give OUTDIR"), ([str(tmp_path / "out")], "no WHEELDIR was given"),
                         ([str(tmp_path / "out"), str(tmp_path / "nowhere")], "is not a folder"),
                         ([str(tmp_path / "out"), str(partial)], "lacks the wheel(s) of: nvidia-nvimgcodec-cu12 "
                                                                 "nvidia-nvjpeg-cu12 nvidia-libnvcomp-cu12 optree")):
        res = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
        assert res.stderr.strip().count("\n") == 0 and not (tmp_path / "out" / "nvidia-smi.txt").exists()
