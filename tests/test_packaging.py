"""The wheel ships the recipes; an installed package (no checkout in sight) finds them by name."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from etpp_dali.cli import main
from etpp_dali.train.config import find_recipe, recipe_dirs

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("setup.cfg", "setup.py", "README.md"):  # a copy: the build leaves nothing in the checkout
        shutil.copy(ROOT / name, src / name)
    for name in ("etpp_dali", "pipelines"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = out.glob("etpp_dali-*.whl")
    return path


def test_the_wheel_carries_every_recipe_as_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"etpp_dali/recipes/{r}" for r in RECIPES} <= names
    # every package of the checkout (setup.cfg lists them one by one), the CLI's modules among them
    packages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "etpp_dali").rglob("__init__.py")}
    assert packages <= names and "etpp_dali/cli/__init__.py" in packages
    assert "etpp_dali/cli/options.py" in names
    assert not any(n.startswith(("pipelines/", "tests/")) for n in names)


def test_an_installed_copy_finds_recipes_by_name(wheel, tmp_path):
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy, not this checkout
    code = ("from etpp_dali.train.config import recipe_dirs, find_recipe; import etpp_dali; "
            "print(etpp_dali.__file__); print(recipe_dirs()); print(find_recipe('resnet50_etpp'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    where, dirs, found = out.stdout.strip().splitlines()
    assert where.startswith(str(target)) and str(ROOT) not in dirs
    assert found == str(target / "etpp_dali" / "recipes" / "resnet50_etpp.yaml")
    helped = subprocess.run([sys.executable, "-m", "etpp_dali", "train", "--recipe", "resnet50_etpp", "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--recipe" in helped.stdout
    missing = subprocess.run([sys.executable, "-m", "etpp_dali", "train", "--recipe", "nope"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "resnet50_etpp" in missing.stderr + missing.stdout


def test_a_checkout_reads_its_own_pipelines_folder():
    assert recipe_dirs()[0] == ROOT / "pipelines"
    assert find_recipe("demo") == ROOT / "pipelines" / "demo.yaml"
    assert find_recipe("demo.yaml") == ROOT / "pipelines" / "demo.yaml"
    assert find_recipe(str(ROOT / "pipelines" / "demo.yaml")) == ROOT / "pipelines" / "demo.yaml"


def test_an_unknown_recipe_lists_the_installed_ones():
    res = CliRunner().invoke(main, ["train", "--recipe", "resnet51_etpp"])
    assert res.exit_code != 0
    line = res.output.strip()
    assert "\n" not in line and "--recipe 'resnet51_etpp'" in line
    assert all(Path(r).stem in line for r in RECIPES)
