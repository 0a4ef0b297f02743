"""Checkpoints of a run: written atomically, read back with their checks, and the RNG states.

``last.pt`` holds everything a run needs to continue (model, optimiser, scaler, EMA, loader
position, RNG states, schedule position, metrics history, a partly done epoch's sums, and the
band a Swin's weights are set for, as its tables have that band's shapes); it is
written with :func:`etpp_dali.util.files.save_with` (a temporary file, flushed, then renamed), so a
``kill -9`` at any moment leaves the last good checkpoint in place. Reading uses
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain data only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from etpp_dali.curriculum.schedule import Curriculum, ScheduleError
from etpp_dali.train.config import RecipeError
from etpp_dali.util.files import save_with

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_to_resume", "read_checkpoint", "rng_state", "seed_all",
           "set_rng_state", "write_checkpoint"]

CHECKPOINT_FORMAT = 1


def seed_all(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (timm's mixup/cutmix draw from NumPy's)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, NumPy and Python RNG states as tensors and plain lists."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned. A run saved with more GPUs than are visible now
    restores the states of the GPUs there are (one per device, in order)."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def write_checkpoint(state: Mapping[str, Any], path: Path) -> Path:
    """``torch.save(state)`` to ``path`` atomically: the old file stays until the new one is whole."""
    return save_with(lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f), path)


def checkpoint_to_resume(resume: str | bool | None, run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: a .pt file, a run folder's last.pt, or (True) ``run_dir``'s."""
    if not resume:
        return None
    path = Path(resume) if isinstance(resume, str) else run_dir / "last.pt"
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise RecipeError(f"--resume: no checkpoint at {path}; give a run folder or a .pt file")
    return path


def read_checkpoint(path: Path, model: str, curriculum: Curriculum) -> dict[str, Any]:
    """Load ``path`` and check that it was written by a run of ``model`` on ``curriculum``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise RecipeError(f"--resume {path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RecipeError(f"--resume {path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT}")
    try:
        curriculum.load_state_dict(ckpt["schedule"])
    except ScheduleError as exc:
        raise RecipeError(f"--resume {path}: {exc}") from None
    saved_model = ckpt["config"].get("model")
    if saved_model != model:
        raise RecipeError(f"--resume {path}: the run trained --model {saved_model}, not {model}")
    return ckpt
