"""One proxy *segment*: the trainer of ``etpp train`` run from the end of stage ``a - 1`` to the
end of stage ``b`` of a schedule, scored there, its full state kept at each stage end on the way.

A segment starts from scratch (``a = 0``), from its own ``last.pt`` (a segment killed part-way),
or from the full state another schedule's run left at the end of stage ``a - 1``: a checkpoint
of a schedule whose first ``a`` stages are this one's (the same bands, magnitudes, data epochs
and batches). Every schedule of a ``--budget`` search spans its learning rate over the budget
(``lr_compute``), so nothing in those stages depends on what comes after them, and the
continued run is the run from scratch, bit for bit (the tests train both). Such a state is
re-addressed to the new schedule (its schedule and loader fingerprints) and resumed as the
trainer resumes any run.

The evaluation at the end of stage ``b`` runs the model on the validation split at full
resolution, as the trainer's own evaluation does; it draws no random numbers, so a state kept
after it continues as if it had not run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import torch

from etpp_dali.curriculum.schedule import Curriculum, Stage
from etpp_dali.search.space import SearchError
from etpp_dali.train.checkpoint import write_checkpoint
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.evaluation import evaluate
from etpp_dali.train.trainer import Trainer

__all__ = ["SegmentTrainer", "ValBatches", "link_state", "readdress_state", "train_segment"]

ValBatches = list[tuple[torch.Tensor, torch.Tensor]]  # (images, labels) as the validation loader gives them


class SegmentTrainer(Trainer):
    """The trainer, stopped at the end of stage ``stop_stage`` and evaluated there;
    ``on_stage_end(k, last_pt)`` hears of every stage end (``last.pt`` then holds its full state).

    Unlike a training run it writes ``last.pt`` at stage ends only, and no weights-only stage
    snapshot (a kill loses at most the stage under way; checkpoints otherwise cost a proxy as
    much as a short stage). ``val_batches`` holds the validation batches as decoded by the first
    segment of a search: every later one evaluates on them, without rebuilding or rerunning the
    validation pipeline."""

    def __init__(self, cfg: TrainConfig, resume: str | bool | None, *, stop_stage: int,
                 on_stage_end: Callable[[int, Path], None], val_batches: ValBatches) -> None:
        super().__init__(cfg, resume)
        self.stop_stage = stop_stage
        self.on_stage_end = on_stage_end
        self.val_batches = val_batches
        self.reached_stop = False
        self._stage_end = False

    def save(self, name: str, partial: dict[str, Any] | None = None) -> Path | None:
        if name == "last.pt" and partial is None and not self._stage_end:
            return None
        return super().save(name, partial)

    def _save_stage_weights(self, stage: Stage) -> None:
        return None

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.cfg.task != "classify":  # a k-NN score needs its memory pass: the trainer's own
            return super()._evaluate(model)
        if not self.val_batches:
            self.val_batches.extend((images.clone(), labels.clone()) for images, labels in self.val_loader)
        return evaluate(model, self.val_batches, self.curriculum.resolution, self.optim.autocast, self.device)

    def _end_epoch(self, epoch: int, stage: Stage, sums: dict[str, Any]) -> dict[str, Any]:
        self._stage_end = epoch + 1 == stage.end_epoch
        row = super()._end_epoch(epoch, stage, sums)
        if not self._stage_end:
            return row
        if stage.index == self.stop_stage and "top1" not in row:
            row.update(self._evaluate(self.model))  # the row is the history's last: the summary reads it
        self.on_stage_end(stage.index, self.out / "last.pt")
        if stage.index == self.stop_stage:
            self.reached_stop = self.stop_requested = True
        return row

    def run(self) -> dict[str, Any]:
        """Train to the end of ``stop_stage``; a resumed segment whose state is already there
        (killed between its last checkpoint and its score) is only scored."""
        end = self.curriculum.stages[self.stop_stage].end_epoch
        if self.resume_path is None or _epochs_done(self.resume_path) < end:
            return super().run()
        self.load(self.resume_path)
        self.history[-1].update(self._evaluate(self.model))
        self.on_stage_end(self.stop_stage, self.resume_path)
        self.reached_stop = True
        return self.summary()


def _epochs_done(checkpoint: Path) -> int:
    return len(torch.load(checkpoint, map_location="cpu", weights_only=True)["history"])


def readdress_state(source: Path, target: Path, curriculum: Curriculum, loader_schedule: str,
                    cfg: TrainConfig) -> None:
    """Write to ``target`` the full state at ``source`` (saved by a schedule that shares its
    first stages with ``curriculum`` and stopped at the end of one of them) as a checkpoint of
    ``curriculum``'s run; ``loader_schedule`` is the fingerprint the run's loader holds."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    saved = Curriculum.from_dict(state["schedule"]["schedule"], source=str(source))
    epochs_done, position = len(state["history"]), state["schedule"]["position"]  # the last epoch, all its steps
    done = [s for s in saved.stages if s.end_epoch <= epochs_done]
    shared = len(done) <= len(curriculum.stages) and all(
        (a.band, a.magnitude, a.epochs, a.batch, a.replay) == (b.band, b.magnitude, b.epochs, b.batch, b.replay)
        for a, b in zip(done, curriculum.stages))
    if not done or done[-1].end_epoch != epochs_done or state["partial"] is not None or not shared:
        raise SearchError(f"{source}: not a state at the end of stages this schedule shares; delete it to retrain")
    state["schedule"] = curriculum.state_dict(curriculum.position(int(position["epoch"]), int(position["step"])))
    state["loader"] = {**state["loader"], "schedule": loader_schedule}
    state["config"] = dataclasses.asdict(cfg)
    write_checkpoint(state, target)


def train_segment(cfg: TrainConfig, *, start: Path | None, stop_stage: int, on_stage_end: Callable[[int, Path], None],
                  val_batches: ValBatches) -> dict[str, Any]:
    """Train ``cfg`` (its ``preset`` the schedule, its ``output`` the run folder) to the end of
    stage ``stop_stage``: from ``output/last.pt`` where one is (a resumed segment), else from
    the state ``start`` (see :func:`readdress_state`), else from scratch. Returns the summary
    (``top1`` at the end of ``stop_stage``; ``interrupted`` when a signal stopped it first)."""
    out = Path(cfg.output)
    resume = (out / "last.pt").is_file()
    trainer = SegmentTrainer(cfg, None, stop_stage=stop_stage, on_stage_end=on_stage_end, val_batches=val_batches)
    try:
        if not resume and start is not None:
            readdress_state(start, out / "last.pt", trainer.curriculum,
                            trainer.train_loader.state_dict()["schedule"], cfg)
            resume = True
        if resume:
            trainer.resume_path = out / "last.pt"
        summary = trainer.run()
    finally:
        trainer.close()
    summary["interrupted"] = not trainer.reached_stop
    return summary


def link_state(last_pt: Path, state: Path) -> None:
    """Keep the state ``last_pt`` holds now at ``state``: a hard link (``last.pt`` is replaced by
    a rename, never rewritten in place, so the link keeps this state), else a copy."""
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(state.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last_pt, tmp)
    except OSError:
        tmp.write_bytes(last_pt.read_bytes())
    os.replace(tmp, state)
