import json

import pytest

from etpp_dali.curriculum.schedule import Curriculum, ScheduleError, StageSpec, scale_band


def epochs(cur):
    return [s.epochs for s in cur.stages]


def test_etpp_resnet_matches_reference_arithmetic():
    cur = Curriculum.preset("etpp", family="resnet", budget=200)
    assert epochs(cur) == [108, 109, 39, 39, 40, 39, 20, 20, 20, 20]
    assert cur.total_epochs == 454
    assert [s.band for s in cur.stages] == [96, 96] + [160] * 4 + [224] * 4
    assert [s.magnitude for s in cur.stages] == list(range(10))
    assert cur.total_compute == pytest.approx(200.0, abs=0.2)
    assert cur.speedup() == pytest.approx(1.50, abs=0.02)


@pytest.mark.parametrize("family,expected", [("convnext", 315), ("deit", 469), ("swin", 454), ("cswin", 454)])
def test_etpp_families_total_epochs_within_one_percent(family, expected):
    cur = Curriculum.preset("etpp", family=family, budget=200)
    assert abs(cur.total_epochs - expected) <= 0.01 * expected
    assert cur.speedup() == pytest.approx(1.5, abs=0.02)


@pytest.mark.parametrize("budget,speedup", [(150, 2.0), (100, 3.0)])
def test_etpp_other_budgets(budget, speedup):
    assert Curriculum.preset("etpp", budget=budget).speedup() == pytest.approx(speedup, rel=0.02)


def test_et_preset():
    cur = Curriculum.preset("et")
    assert epochs(cur) == [60] * 5
    assert cur.total_epochs == 300
    assert cur.relative_compute() == pytest.approx(0.653, abs=0.001)
    assert [s.magnitude for s in cur.stages] == [1, 3, 5, 7, 9]


def test_baseline_preset():
    cur = Curriculum.preset("baseline")
    assert cur.total_epochs == 300 and len(cur.stages) == 1
    assert cur.stages[0].band == 224 and cur.stages[0].magnitude == 9
    assert cur.relative_compute() == pytest.approx(1.0)


def test_replay_presets_divide_data_epochs_but_keep_compute():
    plain = Curriculum.preset("etpp", family="resnet", budget=200)
    replay = Curriculum.preset("etpp", family="resnet", budget=200, replay=True)
    assert [s.replay for s in replay.stages] == [4, 4, 2, 2, 2, 2, 1, 1, 1, 1]
    assert replay.stages[0].buffer == 1920
    assert replay.total_epochs < plain.total_epochs
    assert replay.stages[0].epochs == pytest.approx(plain.stages[0].epochs / 4, abs=1)
    assert replay.total_compute == pytest.approx(plain.total_compute, rel=0.02)
    assert replay.steps_in_epoch(0, fresh_batches=10) == 40
    # replay is off by default and absent for convnext
    assert all(s.replay == 1 for s in Curriculum.preset("etpp", family="convnext", replay=True).stages)


def test_resolution_scaling_rounds_to_even_at_least_16():
    assert scale_band(96, 64) == 28
    assert scale_band(160, 64) == 46
    assert scale_band(224, 64) == 64
    assert scale_band(96, 32) == 16  # 13.7 -> 14 -> clamped up to 16
    cur = Curriculum.preset("etpp", resolution=64, budget=20)
    assert all(s.band % 2 == 0 and 16 <= s.band <= 64 for s in cur.stages)
    assert cur.stages[-1].band == 64


def test_stage_at_and_boundaries():
    cur = Curriculum.preset("etpp", budget=200)
    assert cur.stage_at(0).index == 0
    assert cur.stage_at(107).index == 0
    assert cur.stage_at(108).index == 1
    assert cur.stage_at(453).index == 9
    assert cur.stage_boundaries()[:3] == [0, 108, 217]
    with pytest.raises(ValueError, match="outside"):
        cur.stage_at(454)


def test_compute_fraction_follows_compute_not_epochs():
    cur = Curriculum.preset("etpp", budget=200)
    assert cur.compute_fraction(0) == 0
    # after the two 96-px stages (217 of 454 epochs, 48%), only ~20% of compute is done
    assert cur.compute_fraction(217) == pytest.approx(0.199, abs=0.002)
    assert cur.compute_fraction(454) == 1.0
    # within an epoch, steps interpolate
    a, b = cur.compute_fraction(300, 0, 100), cur.compute_fraction(300, 50, 100)
    c = cur.compute_fraction(301, 0, 100)
    assert a < b < c and b - a == pytest.approx((c - a) / 2)
    # monotone over the whole run
    fr = [cur.compute_fraction(e) for e in range(cur.total_epochs + 1)]
    assert all(x <= y for x, y in zip(fr, fr[1:]))
    assert cur.warmup_fraction(20) == pytest.approx(0.1, abs=0.001)


def test_alpha_changes_the_accounting():
    quad = Curriculum.preset("etpp", budget=200)
    lin = Curriculum.preset("etpp", budget=200, alpha=1.0)
    assert lin.total_epochs < quad.total_epochs  # small bands are relatively dearer at alpha 1
    assert lin.total_compute == pytest.approx(200, rel=0.01)


def test_position_round_trip_and_mismatch():
    cur = Curriculum.preset("etpp", budget=200)
    pos = cur.position(250, 17)
    assert pos.stage == 2
    state = json.loads(json.dumps(cur.state_dict(pos)))
    again = Curriculum.preset("etpp", budget=200)
    assert again.load_state_dict(state) == pos
    with pytest.raises(ScheduleError, match="resume with the same"):
        Curriculum.preset("etpp", budget=150).load_state_dict(state)
    assert cur.position(cur.total_epochs).stage == len(cur.stages)


def test_dict_round_trip():
    cur = Curriculum.preset("etpp", family="deit", budget=150, replay=True)
    assert Curriculum.from_dict(cur.to_dict()) == cur


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_custom_yaml_and_json(tmp_path):
    y = write(tmp_path, """
budget: 100
stages:
  - {band: 128, magnitude: 2}
  - {band: 224, magnitude: 8.5, replay: 1}
""")
    cur = Curriculum.from_file(y)
    assert [s.share for s in cur.specs] == [0.5, 0.5]
    assert cur.total_compute == pytest.approx(100, rel=0.01)
    j = write(tmp_path, json.dumps({"budget": 50, "split": "epochs", "stages": [
        {"band": 160, "magnitude": 1, "share": 0.25}, {"band": 224, "magnitude": 9, "share": 0.75}]}), "s.json")
    cur = Curriculum.from_file(j)
    assert epochs(cur) == [12, 38]
    # resolution override rescales the file's bands
    cur = Curriculum.from_file(y, resolution=64)
    assert [s.band for s in cur.stages] == [36, 64]


@pytest.mark.parametrize("text,match", [
    ("budget: 100\nstages:\n  - {band: 300, magnitude: 1}\n", r"stages\[0\]\.band = 300"),
    ("budget: 100\nstages:\n  - {band: 8, magnitude: 1}\n", r"stages\[0\]\.band = 8"),
    ("budget: 0\nstages:\n  - {band: 96, magnitude: 1}\n", r"budget = 0"),
    ("budget: -5\nstages:\n  - {band: 96, magnitude: 1}\n", r"budget = -5"),
    ("budget: 100\nstages:\n  - {band: 96, magnitude: 1, share: 0.5}\n  - {band: 224, magnitude: 1, share: 0.4}\n",
     r"shares sum to 0\.9"),
    ("budget: 100\nstages:\n  - {band: 96, magnitude: 1, colour: red}\n", r"unknown key stages\[0\]\.'colour'"),
    ("budget: 100\nepochs: 4\nstages:\n  - {band: 96, magnitude: 1}\n", r"unknown key 'epochs'"),
    ("budget: 100\nstages:\n  - {band: 96, magnitude: 12}\n", r"stages\[0\]\.magnitude = 12"),
    ("budget: 100\nstages:\n  - {band: 96, magnitude: 1, replay: 0}\n", r"stages\[0\]\.replay = 0"),
    ("budget: 100\nstages: []\n", r"stages must be a non-empty list"),
    ("budget: 100\nsplit: time\nstages:\n  - {band: 96, magnitude: 1}\n", r"split = 'time'"),
    ("budget: 100\nstages:\n  - {magnitude: 1}\n", r"stages\[0\]\.band is missing"),
    ("stages: [1, 2\n", r"not valid YAML"),
])
def test_validation_errors_name_field_and_value(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(ScheduleError, match=match) as info:
        Curriculum.from_file(p)
    assert str(p) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ScheduleError, match="cannot read"):
        Curriculum.from_file(tmp_path / "nope.yaml")
    with pytest.raises(ScheduleError, match="--preset 'fast'"):
        Curriculum.preset("fast")
    with pytest.raises(ScheduleError, match="--family 'vgg'"):
        Curriculum.preset("etpp", family="vgg")


def test_constructor_rejects_tiny_budget():
    with pytest.raises(ScheduleError, match="no whole data epoch"):
        Curriculum([StageSpec(224, 9, 1.0)], budget=0.5)


@pytest.mark.parametrize("module", ["curriculum", "presets", "schedule_file", "recipe"])
def test_schedule_modules_import_neither_torch_nor_dali(module):
    import subprocess
    import sys

    code = (f"import sys, etpp_dali.{module}; "
            "bad = [m for m in ('torch', 'nvidia.dali') if m in sys.modules]; "
            "sys.exit(f'imports {bad}' if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_curriculum_wing_with_all_its_modules_imports_neither_torch_nor_dali():
    """Every module of the wing and every name it exports, loaded in a fresh interpreter."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import etpp_dali.curriculum as wing
        modules = {m.name for m in pkgutil.iter_modules(wing.__path__)}
        assert {"schedule", "stages", "presets", "schedule_file", "batching"} <= modules, modules
        for name in modules:
            importlib.import_module(f"etpp_dali.curriculum.{name}")
        for name in wing.__all__:
            getattr(wing, name)
        bad = [m for m in ("torch", "nvidia.dali") if m in sys.modules]
        sys.exit(f"imports {bad}" if bad else 0)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_kind_says_where_a_schedule_came_from(tmp_path):
    assert [Curriculum.preset(p).kind for p in ("etpp", "et", "baseline")] == ["etpp", "et", "baseline"]
    f = write(tmp_path, "budget: 10\nstages:\n  - {band: 224, magnitude: 9}\n", name="etpp_like.yaml")
    from_file = Curriculum.resolve(str(f))
    assert from_file.kind == "file" and from_file.name == "etpp_like"
    assert Curriculum.from_dict({"budget": 10, "stages": [{"band": 224, "magnitude": 9}]}).kind == "custom"
    with pytest.raises(ScheduleError, match="kind = 'paper'"):
        Curriculum([StageSpec(224, 9, 1.0)], budget=10, kind="paper")


def test_resolve_names_a_preset_or_a_file(tmp_path):
    assert Curriculum.resolve("et") == Curriculum.preset("et")
    assert Curriculum.resolve("etpp", family="deit", budget=100, resolution=112).total_epochs == \
        Curriculum.preset("etpp", family="deit", budget=100, resolution=112).total_epochs
    f = write(tmp_path, "budget: 10\nstages:\n  - {band: 224, magnitude: 9}\n")
    assert Curriculum.resolve(str(f), budget=20).total_epochs == 20
    with pytest.raises(ScheduleError, match="neither a preset"):
        Curriculum.resolve(str(tmp_path / "missing.yaml"))
