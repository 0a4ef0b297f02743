"""Shared fixtures: the real photos, small generated data sets, a private cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etpp_dali.data.demo import DemoSpec, write_demo_dataset


def _find_hymenoptera() -> Path:
    """The shared photos: $ETPP_HYMENOPTERA, else ../shared beside the checkout, else /work/shared."""
    candidates = [os.environ.get("ETPP_HYMENOPTERA", ""),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera",
                  Path("/work/shared/data/hymenoptera")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return Path(candidates[1])


HYMENOPTERA = _find_hymenoptera()


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Scan caches and the demo set go to a temporary folder, never the user's cache."""
    os.environ["ETPP_CACHE"] = str(tmp_path_factory.mktemp("etpp-cache"))
    yield


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is not here")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo set: 4 classes, 24 train and 6 val images each, 48 px."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "set",
                              DemoSpec(classes=4, train_per_class=24, val_per_class=6, size=48))


@pytest.fixture(scope="module")
def unique_list(demo_root, tmp_path_factory):
    """A file list of 40 demo images where every image has its own label, so labels name the samples."""
    files = sorted((demo_root / "train").rglob("*.jpg"))[:40]
    path = tmp_path_factory.mktemp("list") / "unique.txt"
    path.write_text("\n".join(f"{f} {i}" for i, f in enumerate(files)))
    return path
