"""What a run reports while it trains: ``metrics.jsonl``, TensorBoard scalars, the progress bar of
an epoch on a terminal and, in a log file, one line an epoch. Only rank 0 writes or prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from etpp_dali.curriculum.schedule import Stage
from etpp_dali.train.config import RecipeError
from etpp_dali.util.files import write_text_atomic

__all__ = ["TENSORBOARD_KEYS", "RunLog"]

TENSORBOARD_KEYS = ("loss", "lr", "images_per_s", "data_wait", "band", "magnitude", "top1", "top5", "ema_top1",
                    "knn_top1")


class RunLog:
    """The reports of one run in ``out``: ``rank0`` says whether this process writes them,
    ``progress`` whether it shows progress at all, ``tensorboard`` whether scalars go to
    ``out/tensorboard`` too."""

    def __init__(self, out: Path, *, rank0: bool, progress: bool, tensorboard: bool, total_epochs: int) -> None:
        self.out = out
        self.rank0 = rank0
        self.progress = progress
        self.total_epochs = total_epochs
        self.tb = _tensorboard_writer(out) if tensorboard and rank0 else None

    def write_metrics(self, history: Sequence[dict[str, Any]], new_row: bool = True) -> None:
        """Rewrite metrics.jsonl from ``history`` (so a resumed run's log matches its checkpoint);
        with ``new_row``, log the newest row to TensorBoard."""
        if not self.rank0:
            return
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if self.tb is not None and history and new_row:
            row = history[-1]
            for key in TENSORBOARD_KEYS:
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], global_step=row["epoch"])
            self.tb.flush()

    def progress_bar(self, epoch: int, steps: int, initial: int) -> tqdm:
        """The bar of data epoch ``epoch`` (``steps`` micro-batches, ``initial`` done already);
        disabled unless rank 0 shows progress on a terminal."""
        shown = self.rank0 and self.progress and sys.stderr.isatty()
        return tqdm(total=steps, initial=initial, disable=not shown, desc=f"epoch {epoch + 1}/{self.total_epochs}",
                    leave=False, dynamic_ncols=True)

    @staticmethod
    def show_progress(bar: tqdm, stage: Stage, sums: dict[str, Any], loss_sum: torch.Tensor, seconds: float) -> None:
        """The bar's figures: images/sec and mean loss of the epoch so far (``loss_sum`` is read
        from the device here, so call it only every few steps)."""
        seconds += sums["time"]
        bar.set_postfix(img_s=f"{sums['seen'] / max(1e-9, seconds):.0f}",
                        loss=f"{(sums['loss_sum'] + float(loss_sum)) / sums['seen']:.3f}", band=stage.band,
                        m=f"{stage.magnitude:g}", stage=stage.index, refresh=False)

    def print_epoch(self, row: dict[str, Any]) -> None:
        """A log file (stderr not a terminal) gets one line an epoch instead of a bar."""
        if not (self.rank0 and self.progress) or sys.stderr.isatty():
            return
        top = f", top-1 {row['top1']:.1f}%" if "top1" in row else ""
        top += f", k-NN top-1 {row['knn_top1']:.1f}%" if "knn_top1" in row else ""
        print(f"epoch {row['epoch'] + 1}/{self.total_epochs} stage {row['stage']} band {row['band']} "
              f"m {row['magnitude']:g}: loss {row['loss']:.3f}, {row['images_per_s']:.0f} img/s{top}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard_writer(out: Path) -> Any:
    try:  # tensorboard is optional: only --tensorboard needs it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RecipeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"))
