"""A thin PyTorch trainer on timm models whose epoch hook moves the loader along the curriculum.

What a user of timm's train.py expects: AdamW with a linearly scaled learning rate, warm-up and
cosine decay over the fraction of *compute* done, AMP, EMA, mixup/cutmix, label smoothing,
drop-path, gradient clipping, channels-last, DDP, evaluation at full resolution, and checkpoints
that survive a ``kill -9`` at any moment:

- ``last.pt`` after every epoch (everything needed to continue) and a weights-only
  ``stage<k>.pt`` when stage k ends, each written atomically (see :mod:`etpp_dali.train.checkpoint`);
- ``metrics.jsonl`` is rewritten from the history the checkpoint holds, so a resumed run's log
  has no gap and no duplicate epoch;
- Ctrl-C (SIGINT) or SIGTERM writes a checkpoint at the current optimiser step and exits cleanly.

Per-stage batches (:mod:`etpp_dali.curriculum.batching`): a stage whose per-device batch is smaller than the
global batch over the devices accumulates gradients over ``global_batch / (batch x world)``
micro-batches, each loss scaled by the inverse of the micro-batches in its group, so every
optimiser step sees the global batch and the learning rate, EMA, logs and compute fraction
follow optimiser steps, unchanged by the split. An epoch whose micro-batches do not fill its
last group steps on what that group holds, scaled by its own count (the mean over its images),
so no image is dropped. A stop (Ctrl-C, SIGTERM) waits for the end of the group, so a checkpoint
never holds half-accumulated gradients.

The rooms around the loop: the settings (:mod:`etpp_dali.train.config`), the data
(:mod:`etpp_dali.train.data`), the model and its band rules (:mod:`etpp_dali.train.models`), the
optimiser and LR schedule (:mod:`etpp_dali.train.optimisation`), checkpoints, processes and devices
(:mod:`etpp_dali.train.distributed`), evaluation (:mod:`etpp_dali.train.evaluation`) and ``summary.json``
(:mod:`etpp_dali.train.summary`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from etpp_dali.curriculum.batching import accumulation
from etpp_dali.curriculum.schedule import Stage
from etpp_dali.train.checkpoint import (
    checkpoint_to_resume,
    read_checkpoint,
    rng_state,
    seed_all,
    set_rng_state,
    write_checkpoint,
)
from etpp_dali.train.config import RecipeError, TrainConfig
from etpp_dali.train.data import open_train_data
from etpp_dali.train.distributed import (
    agree_any,
    init_from_env,
    is_distributed,
    is_rank0,
    threads_per_process,
    train_device,
    world_size,
)
from etpp_dali.train.evaluation import evaluate
from etpp_dali.train.finetune import build_task_model
from etpp_dali.train.knn import knn_evaluate
from etpp_dali.train.models import model_band, unwrap_model
from etpp_dali.train.optimisation import Optimisation
from etpp_dali.train.progress import RunLog
from etpp_dali.train.summary import summarize
from etpp_dali.util.files import write_text_atomic
from etpp_dali.util.plots import plot_training

__all__ = ["SYNC_EVERY", "Trainer", "start_run", "train"]

# Steps between reads of values kept on the device (the progress bar's loss, the ranks' stop
# vote): each read makes the host wait for the GPU, which then runs dry until the host queues more.
SYNC_EVERY = 20


class Trainer:
    """Runs one training job from a :class:`TrainConfig`: the epoch loop, checkpoints and the stop
    signals; its reports go through a :class:`~etpp_dali.train.progress.RunLog`."""

    def __init__(self, cfg: TrainConfig, resume: str | bool | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rank0, self.world = is_rank0(), world_size()
        self.device = train_device(cfg.device, cfg.amp)
        self.threads = threads_per_process(cfg.threads, self.device)
        self.curriculum = cfg.curriculum(self.world)
        self.global_batch = cfg.global_batch_size(self.world)
        self.out = Path(cfg.output)
        self.resume_path = checkpoint_to_resume(resume, self.out)
        data = open_train_data(cfg, self.curriculum, self.device, self.threads)
        self.data_root, self.num_classes = data.root, data.num_classes
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.memory_loader = data.memory_loader  # MAE: the training images the k-NN monitor compares to
        seed_all(cfg.seed)
        model, self.memory_format = build_task_model(cfg, self.curriculum, self.num_classes, self.device)
        self.optim = Optimisation(cfg, model, self.curriculum, self.num_classes, self.device, self.global_batch)
        self.history: list[dict[str, Any]] = []
        self.log = RunLog(self.out, rank0=self.rank0, progress=cfg.progress, tensorboard=cfg.tensorboard,
                          total_epochs=self.curriculum.total_epochs)
        self.elapsed = 0.0
        self.stop_requested = False
        self.interrupted = False

    @property
    def model(self) -> torch.nn.Module:
        """The model a step runs (its DDP wrapper under DDP, rebuilt at a band that resizes it)."""
        return self.optim.model

    # --------------------------------------------------------------------- checkpoints
    def state(self, partial: dict[str, Any] | None) -> dict[str, Any]:
        """Everything ``last.pt`` holds; ``partial`` is the running sums of an unfinished epoch."""
        cur, loader = self.curriculum, self.train_loader
        return {"config": dataclasses.asdict(self.cfg),
                "schedule": cur.state_dict(cur.position(min(loader.epoch, cur.total_epochs), loader.step)),
                "model": unwrap_model(self.model).state_dict(), "band": model_band(self.model),
                **self.optim.state_dict(),
                "loader": loader.state_dict(), "rng": rng_state(), "history": self.history,
                "partial": partial, "elapsed": self.elapsed, "global_batch": self.global_batch}

    def save(self, name: str, partial: dict[str, Any] | None = None) -> Path | None:
        """Write the state to ``name`` in the run folder (rank 0 only)."""
        return write_checkpoint(self.state(partial), self.out / name) if self.rank0 else None

    def load(self, path: Path) -> dict[str, Any] | None:
        """Restore everything from ``path``; returns the partial-epoch sums, if any."""
        ckpt = read_checkpoint(path, self.cfg.model, self.curriculum)
        saved_batch = ckpt.get("global_batch", self.global_batch)
        if saved_batch != self.global_batch:
            raise RecipeError(f"--resume {path}: the run steps on a global batch of {saved_batch}, not "
                              f"{self.global_batch}; resume with the same --global-batch, --batch-size and devices")
        if ckpt.get("band") is not None:  # the weights' band (a Swin's tables have its shapes)
            self.optim.set_band(ckpt["band"])
        try:
            unwrap_model(self.model).load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # torch lists every mismatch, one a line: name the last
            raise RecipeError(f"--resume {path}: its weights do not fit --model {self.cfg.model} "
                              f"({str(exc).strip().splitlines()[-1].strip()})") from None
        self.optim.load_state_dict(ckpt)
        self.train_loader.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        self.history = list(ckpt["history"])
        self.elapsed = float(ckpt["elapsed"])
        return ckpt["partial"]

    def _save_stage_weights(self, stage: Stage) -> None:
        """At the end of a stage, a weights-only snapshot (last.pt holds the full state)."""
        if not self.rank0:
            return
        cur = self.curriculum
        write_checkpoint({"config": dataclasses.asdict(self.cfg),
                          "schedule": cur.state_dict(cur.position(stage.end_epoch)),
                          "model": unwrap_model(self.model).state_dict(), "band": model_band(self.model),
                          "ema": self.optim.ema.module.state_dict() if self.optim.ema else None,
                          "history": self.history}, self.out / f"stage{stage.index}.pt")

    # ------------------------------------------------------------------------ signals
    def _handle_signals(self) -> None:
        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True

        self._old_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def _should_stop(self, step: int, steps: int) -> bool:
        """The stop flag after ``step`` of ``steps``, agreed by every rank (they must stop at the
        same step). Under DDP the vote is a collective and a host sync, so the ranks hold it every
        SYNC_EVERY optimiser steps and at the epoch's last."""
        if is_distributed() and step % SYNC_EVERY and step < steps:
            return False
        self.stop_requested = agree_any(self.stop_requested, self.device)
        return self.stop_requested

    def _restore_signals(self) -> None:
        for s, h in getattr(self, "_old_handlers", {}).items():
            signal.signal(s, h)

    # --------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or until interrupted); returns the summary."""
        partial = self.load(self.resume_path) if self.resume_path else None
        self.log.write_metrics(self.history, new_row=False)  # a resumed run's log matches its checkpoint
        self._handle_signals()
        self.interrupted = False
        try:
            for epoch in range(len(self.history), self.curriculum.total_epochs):  # 0..n-1 are done
                stage = self.curriculum.stage_at(epoch)
                sums = self._train_epoch(epoch, stage, partial)
                partial = None
                if self.stop_requested and self.train_loader.step < self.train_loader.batches_in_epoch(epoch):
                    self._save_interrupted(sums)
                    break
                self.log.print_epoch(self._end_epoch(epoch, stage, sums))
                if self.stop_requested:
                    self.interrupted = True
                    break
        finally:
            self._restore_signals()
        return self.summary()

    def accumulation(self, stage: Stage) -> int:
        """Micro-batches per optimiser step in ``stage``."""
        return accumulation(stage, self.cfg.batch_size, self.global_batch, self.world)

    def _train_epoch(self, epoch: int, stage: Stage, partial: dict[str, Any] | None) -> dict[str, Any]:
        """Train data epoch ``epoch`` from the loader's position (a resumed one continues, always at
        the start of an accumulation group); returns the epoch's running sums (loss, images,
        seconds, seconds waiting for data). The loss adds up on the device; the host reads it for
        the progress bar every SYNC_EVERY micro-batches and once at the end."""
        loader = self.train_loader
        loader.set_epoch(epoch)
        self.optim.set_band(stage.band)
        sums = dict(partial or {"loss_sum": 0.0, "seen": 0, "time": 0.0, "wait": 0.0})
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        micro, accum = loader.batches_in_epoch(epoch), self.accumulation(stage)
        steps = math.ceil(micro / accum)  # optimiser steps: what the LR and compute fraction count
        bar = self.log.progress_bar(epoch, micro, loader.step)
        t_epoch, wait0 = time.perf_counter(), loader.wait_seconds
        for images, labels in loader:
            group, position = divmod(loader.step - 1, accum)
            in_group = min(accum, micro - group * accum)  # the last group of an epoch may hold fewer
            if position == 0:
                self.optim.set_lr(self.curriculum.compute_fraction(epoch, group, steps))
            last = position == in_group - 1
            loss_sum.add_(self.optim.step(images, labels, micro_batches=in_group, last=last), alpha=len(labels))
            sums["seen"] += len(labels)
            bar.update(1)
            if not bar.disable and loader.step % SYNC_EVERY == 0:
                self.log.show_progress(bar, stage, sums, loss_sum, time.perf_counter() - t_epoch)
            if last and self._should_stop(group + 1, steps):
                break
        bar.close()
        sums["loss_sum"] += float(loss_sum)
        spent = time.perf_counter() - t_epoch
        sums["time"] += spent
        sums["wait"] += loader.wait_seconds - wait0
        self.elapsed += spent
        return sums

    def _save_interrupted(self, sums: dict[str, Any]) -> None:
        self.save("last.pt", partial=sums)
        self.interrupted = True
        if self.rank0:
            print(f"\netpp: interrupted; checkpoint written to {self.out / 'last.pt'} "
                  f"(resume with --resume {self.out})", file=sys.stderr)

    def _end_epoch(self, epoch: int, stage: Stage, sums: dict[str, Any]) -> dict[str, Any]:
        """Log the finished epoch (evaluating when due), write last.pt, and stage<k>.pt at a stage's end."""
        cur = self.curriculum
        row: dict[str, Any] = {
            "epoch": epoch, "stage": stage.index, "band": stage.band, "magnitude": stage.magnitude,
            "replay": stage.replay, "lr": self.optim.optimizer.param_groups[0]["lr"],
            "loss": sums["loss_sum"] / max(1, sums["seen"]), "images": sums["seen"] * self.world,
            "images_per_s": sums["seen"] * self.world / max(1e-9, sums["time"]),
            "epoch_time": sums["time"], "data_wait": sums["wait"] / max(1e-9, sums["time"]),
            "compute_fraction": cur.compute_fraction(epoch + 1), "time": self.elapsed,
            "batch": stage.batch or self.cfg.batch_size, "accumulation": self.accumulation(stage),
            "echo": self.train_loader.echo_factor(epoch),  # decoded images served r samples (auto: chosen)
        }
        if epoch == cur.total_epochs - 1 or (epoch + 1) % self.cfg.val_every == 0:
            t_eval = time.perf_counter()
            row.update(self._evaluate(self.model))
            if self.optim.ema is not None:
                ema = self._evaluate(self.optim.ema.module)
                row.update({f"ema_{k}": v for k, v in ema.items() if k != "val_images"})
            row["eval_s"] = time.perf_counter() - t_eval  # apart from "time", which counts training only
        self.history.append(row)
        self.save("last.pt")
        if epoch + 1 == stage.end_epoch:
            self._save_stage_weights(stage)
        self.log.write_metrics(self.history)
        return row

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.cfg.task == "mae":
            return knn_evaluate(model, self.memory_loader, self.val_loader, self.optim.autocast, self.device,
                                k=self.cfg.knn_k)
        return evaluate(model, self.val_loader, self.curriculum.resolution, self.optim.autocast, self.device)

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds (see :func:`etpp_dali.train.summary.summarize`)."""
        return summarize(self.history, self.curriculum, name=self.cfg.name, model=self.cfg.model,
                         elapsed=self.elapsed, interrupted=self.interrupted, output=str(self.out))

    def close(self) -> None:
        self.train_loader.close()
        if self.memory_loader is not None and hasattr(self.memory_loader, "close"):
            self.memory_loader.close()
        self.log.close()


def train(cfg: TrainConfig, resume: str | bool | None = None) -> dict[str, Any]:
    """Run ``cfg`` to the end; write the summary, the metrics log and the curves plot."""
    trainer = Trainer(cfg, resume)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if trainer.rank0:
        out = Path(cfg.output)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if trainer.history:
            plot_training(trainer.history, out / "curves.png",
                          title=f"{cfg.model}, {trainer.curriculum.name}, E = {trainer.curriculum.budget:g}")
    return summary


def start_run(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """What ``etpp train`` runs once its settings are merged: refuse to write over the run in
    ``cfg.output`` unless ``resume`` continues it, join the process group torchrun describes
    (if any), and :func:`train` to the end."""
    out = Path(cfg.output)
    if not resume and (out / "last.pt").exists():
        raise RecipeError(f"--output {out} holds a run already; pass --resume to continue it or choose another "
                          "--output")
    init_from_env()
    return train(cfg, resume=str(out) if resume else None)
