"""The data of a run: the training set (or the embedded demo set), its validation split, and the
curriculum and validation loaders over them, each rank reading its own shard."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.data.demo import DemoSpec, demo_dataset
from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import open_source
from etpp_dali.data.splits import holdout_split
from etpp_dali.loader.echo.schedule import DEFAULT_ECHO_BUFFER_MB
from etpp_dali.loader.loaders import CurriculumLoader
from etpp_dali.loader.settings import LoaderSettings
from etpp_dali.loader.validation import ValidationLoader
from etpp_dali.train.config import RecipeError, TrainConfig
from etpp_dali.train.distributed import is_distributed, is_rank0

__all__ = ["TrainData", "data_root", "holdout_split", "loader_settings", "open_train_data"]


@dataclass
class TrainData:
    """The loaders of a run and what the model needs to know of the data."""

    root: Path
    train_loader: CurriculumLoader
    val_loader: ValidationLoader
    num_classes: int
    memory_loader: ValidationLoader | None = None  # MAE: the training images at full resolution, for the k-NN monitor


def open_train_data(cfg: TrainConfig, curriculum: Curriculum, device: torch.device, threads: int) -> TrainData:
    """Open ``cfg.data`` (train/ and val/, or a held-out ``val_split``) and build both loaders."""
    root = data_root(cfg)
    train_src, val_src = _open_splits(root, cfg)
    settings = loader_settings(cfg, device, threads)
    train_loader = CurriculumLoader(train_src, curriculum, settings=settings)
    val_loader = ValidationLoader(val_src, curriculum.resolution, settings=settings)
    memory_loader = None
    if cfg.task == "mae":  # the k-NN monitor's memory bank: the training images, read as validation reads
        memory_loader = ValidationLoader(train_src, curriculum.resolution, settings=replace(settings, verbose=False))
    return TrainData(root, train_loader, val_loader, len(train_src.classes), memory_loader)


def loader_settings(cfg: TrainConfig, device: torch.device, threads: int) -> LoaderSettings:
    """The run's settings of both loaders: ``batch_size`` is per device (a stage's own batch comes
    from the curriculum, ``Stage.batch``); echo and erasing as the recipe says (``echo_buffer_mb``
    only when it sets one: else the loader's bound); only rank 0 reports on stderr."""
    buffer_mb = cfg.echo_buffer_mb if cfg.echo_buffer_mb is not None else DEFAULT_ECHO_BUFFER_MB
    return LoaderSettings(batch_size=cfg.batch_size, device=str(device), num_threads=threads, seed=cfg.seed,
                          lowpass=cfg.lowpass, channels_last=cfg.channels_last, echo=cfg.loader_echo(),
                          echo_max=cfg.echo_max, echo_buffer_mb=buffer_mb, reprob=cfg.reprob, verbose=is_rank0(),
                          randaugment=cfg.task != "mae")  # MAE: random-resized crops and flips only


def data_root(cfg: TrainConfig) -> Path:
    """The data set folder: ``--data``, or the demo set (written once per node by its first
    process while the others wait, then found by every process)."""
    if not cfg.data:
        raise RecipeError(f"recipe {cfg.name!r} needs a data set: pass --data DIR (an ImageFolder with train/ "
                          "and val/)")
    if cfg.data == "demo":
        spec = DemoSpec(classes=cfg.demo_classes, train_per_class=cfg.demo_train_per_class,
                        val_per_class=cfg.demo_val_per_class, size=cfg.demo_size)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            demo_dataset(spec)
        if is_distributed():
            torch.distributed.barrier()
        return demo_dataset(spec)
    root = Path(cfg.data)
    if not root.exists():
        raise RecipeError(f"--data {cfg.data}: no such path; give an ImageFolder root with train/ and val/")
    return root


def _open_splits(root: Path, cfg: TrainConfig) -> tuple[Any, Any]:
    """The train and val sources of ``root``: its val/ folder, else a held-out part of train/."""
    try:
        train_src = open_source(root, "train", trust=cfg.trust_data)
        if (root / "val").is_dir():
            return train_src, open_source(root, "val", classes=train_src.classes, trust=cfg.trust_data)
        if cfg.val_split:
            return holdout_split(train_src, cfg.val_split, cfg.seed)
    except DataError as exc:
        raise RecipeError(str(exc)) from None
    raise RecipeError(f"--data {cfg.data}: has no val/ split; add one or pass --val-split 0.1")
