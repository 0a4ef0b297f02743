"""Per-stage batch sizes and gradient accumulation: how many images a device takes per forward
pass in each stage, and how many of those micro-batches make one optimiser step.

Three numbers define a run's batches:

- ``batch_size``: the per-device batch at full resolution (the run's base batch);
- ``global_batch``: the images every optimiser step sees, over all devices (default
  ``batch_size x world``); the learning rate scales with it, never with a stage's batch;
- a stage's per-device batch ``b_k`` (default ``batch_size``): the schedule's ``batch`` field,
  a recipe's ``stage_batch`` list (one entry a stage, 0 for the base batch), or the rule
  ``stage_batch: auto``.

Stage k accumulates ``global_batch / (b_k x world)`` micro-batches per optimiser step, which must
be a whole number. The rule ``auto`` scales the base batch by ``(R/B_k)^2``: a sample's
activations, and for a convnet its compute, scale with ``B^2``, so a micro-batch at a small band
then costs no more memory than one at full resolution and fills the device the same way. The
result is rounded to the nearest divisor of ``global_batch / world`` by ratio (so the
accumulation is whole; with power-of-two batches a micro-batch then takes at most about 1.4x the
memory of a full-resolution one: the nearest rather than the next lower divisor, because a
larger micro-batch keeps the device busier at the small bands, where steps are short), never
above the global batch per device nor ``stage_batch_cap`` when one is given. On one device the batch can grow only up
to the global batch: a larger global batch, accumulated at the large bands, leaves room.

This module imports neither torch nor DALI.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from etpp_dali.curriculum.schedule import Curriculum, Stage

__all__ = ["AUTO", "BatchError", "accumulation", "auto_stage_batch", "global_batch_size", "resolve_stage_batches",
           "stage_batch_rows"]

AUTO = "auto"


class BatchError(ValueError):
    """Batch settings that make no whole accumulation; the message names the setting."""


def global_batch_size(batch_size: int, global_batch: int | None, world: int) -> int:
    """The images per optimiser step over all devices: ``global_batch``, else ``batch_size x world``."""
    return global_batch if global_batch else batch_size * world


def auto_stage_batch(batch_size: int, band: int, resolution: int, per_device: int, cap: int | None = None) -> int:
    """``batch_size x (resolution / band)^2``, rounded to the nearest divisor of ``per_device``
    (the global batch over the devices) by ratio, the smaller on a tie, and at most ``cap``."""
    target = batch_size * (resolution / band) ** 2
    limit = min(per_device, cap or per_device)
    divisors = [d for d in range(1, limit + 1) if per_device % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d / target)), d))


def accumulation(stage: Stage, batch_size: int, global_batch: int, world: int) -> int:
    """Micro-batches per optimiser step in ``stage`` (its batch, or ``batch_size``, on each device)."""
    return global_batch // ((stage.batch or batch_size) * world)


def resolve_stage_batches(curriculum: Curriculum, *, batch_size: int, global_batch: int | None = None,
                          world: int = 1, stage_batch: str | Sequence[int] | None = None,
                          cap: int | None = None) -> Curriculum:
    """``curriculum`` with each stage's per-device batch set from ``stage_batch`` (``"auto"``, a
    list with one entry a stage, or None for the schedule's own ``batch`` fields) and checked
    against the global batch. A stage at the base batch keeps ``batch = 0``, so a run without
    stage batches keeps its schedule (and its checkpoints' fingerprint)."""
    total = global_batch_size(batch_size, global_batch, world)
    if total % world:
        raise BatchError(f"--global-batch {total} is not a multiple of the {world} devices")
    if stage_batch is None:
        batches, where = [s.batch for s in curriculum.stages], "schedule stages[{}].batch"
    elif stage_batch == AUTO:
        batches = [auto_stage_batch(batch_size, s.band, curriculum.resolution, total // world, cap)
                   for s in curriculum.stages]
        where = "stage_batch auto, stage {}"
    else:
        batches, where = _stage_batch_list(stage_batch, len(curriculum.stages)), "stage_batch[{}]"
    _check_divides(total, batch_size, world, "--batch-size")
    for i, b in enumerate(batches):
        _check_divides(total, b or batch_size, world, where.format(i))
    normalised = [0 if b == batch_size else b for b in batches]
    if normalised == [s.batch for s in curriculum.stages]:
        return curriculum
    return curriculum.with_stage_batches(normalised)


def _stage_batch_list(values: Sequence[Any], stages: int) -> list[int]:
    if isinstance(values, str) or len(values) != stages:
        raise BatchError(f"stage_batch {values!r}: give 'auto' or one per-device batch for each of the {stages} "
                         "stages (0 for --batch-size)")
    for i, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BatchError(f"stage_batch[{i}] = {v!r} is invalid; use an integer >= 1 (or 0 for --batch-size)")
    return list(values)


def _check_divides(total: int, batch: int, world: int, where: str) -> None:
    if total % (batch * world):
        raise BatchError(f"{where}: a per-device batch of {batch} on {world} device(s) does not divide the global "
                         f"batch {total} (--global-batch); use a batch that divides {total // world}")


def stage_batch_rows(curriculum: Curriculum, batch_size: int, global_batch: int, world: int) -> list[dict[str, int]]:
    """Per stage its per-device batch and accumulation (what ``etpp schedule`` adds to its table)."""
    return [{"batch": s.batch or batch_size, "accumulation": accumulation(s, batch_size, global_batch, world)}
            for s in curriculum.stages]
