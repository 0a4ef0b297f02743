"""Which images make each training batch, in which order, and with which random draws.

Epochs: a fresh permutation per epoch from (seed, epoch); with ``num_shards`` ranks each takes
every ``num_shards``-th image of it (disjoint; the remainder of the division is left out that
epoch), and completes its last batch from the start of its own part, so every rank runs the same
number of full batches and sees each of its images at least once. A file the decoder failed on
takes the place of the next good image of the rank's part.

Batches: a step takes the stage's fresh batch (``batch_size // r`` images in a stage with replay
factor r; the loader completes the batch from its replay buffer), and its draws come from a
generator seeded by (seed, epoch, step, rank), so a batch is the same whenever it is made: after
a resume, a rebuild, or a prefetch across a stage change.
"""

from __future__ import annotations

import collections
import math
from typing import Iterator

import numpy as np

from .curriculum import Curriculum
from .data import DataError
from .pipeline import PipelineConfig, TrainBatch, make_train_batch
from .sources import Source

__all__ = ["TrainPlan", "TrainFeed"]


class TrainPlan:
    """The batches of one rank over the whole schedule (see the module docstring)."""

    def __init__(self, source: Source, curriculum: Curriculum, batch_size: int, cfg: PipelineConfig, *,
                 seed: int, shard_id: int, num_shards: int) -> None:
        self.source, self.curriculum, self.batch_size, self.cfg = source, curriculum, batch_size, cfg
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self.shard_len = len(source) // num_shards
        if self.shard_len < 1:
            raise DataError(f"{source.name}: {len(source)} images cannot feed {num_shards} ranks")
        self.excluded: dict[int, str] = {}  # source index -> why the decoder failed on it
        self._labels, self._sizes = source.labels, source.sizes

    def fresh_batch_size(self, epoch: int) -> int:
        """Images a step of ``epoch`` decodes: the batch size divided by the stage's replay factor."""
        return max(1, self.batch_size // self.curriculum.stage_at(epoch).replay)

    def batches_in_epoch(self, epoch: int) -> int:
        return math.ceil(self.shard_len / self.fresh_batch_size(epoch))

    def successor(self, epoch: int, step: int) -> tuple[int, int]:
        """The (epoch, step) after (epoch, step)."""
        return (epoch, step + 1) if step + 1 < self.batches_in_epoch(epoch) else (epoch + 1, 0)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's source indices of ``epoch``, padded to whole fresh batches."""
        perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.source))
        mine = perm[self.shard_id::self.num_shards][: self.shard_len]
        if self.excluded:
            failed = np.isin(mine, list(self.excluded))
            good = mine[~failed]
            if not len(good):
                raise DataError(f"{self.source.name}: every image of this rank failed to decode")
            bad_at = np.flatnonzero(failed)
            mine = mine.copy()
            mine[bad_at] = good[bad_at % len(good)]
        fresh = self.fresh_batch_size(epoch)
        pad = -len(mine) % fresh
        return np.concatenate([mine, mine[:pad]]) if pad else mine

    def batch_indices(self, epoch: int, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """The source indices of batch (epoch, step); ``order``: :meth:`epoch_order` when known."""
        fresh = self.fresh_batch_size(epoch)
        order = self.epoch_order(epoch) if order is None else order
        return order[step * fresh:(step + 1) * fresh]

    def batches(self, epoch: int, step: int) -> Iterator[TrainBatch]:
        """The pipeline inputs from (epoch, step) to the end of the schedule, in consumption order."""
        while epoch < self.curriculum.total_epochs:
            stage = self.curriculum.stage_at(epoch)
            order = self.epoch_order(epoch)
            for s in range(step, self.batches_in_epoch(epoch)):
                idx = self.batch_indices(epoch, s, order)
                rng = np.random.default_rng([self.seed, epoch, s, self.shard_id])
                yield make_train_batch([self.source.read(int(i)) for i in idx], self._labels[idx], self._sizes[idx],
                                       band=stage.band, magnitude=stage.magnitude, epoch=epoch, step=s,
                                       rng=rng, cfg=self.cfg)
            epoch, step = epoch + 1, 0


class TrainFeed:
    """The callable DALI pulls training batches from, starting at (epoch, step); remembers which
    batches it produced that the loader has not yet taken (``produced``, oldest first)."""

    def __init__(self, plan: TrainPlan, start: tuple[int, int]) -> None:
        self._plan = plan
        self._batches = plan.batches(*start)
        self.produced: collections.deque[tuple[int, int]] = collections.deque()
        self.next_unproduced = start

    def __call__(self) -> tuple:
        batch = next(self._batches)  # StopIteration ends the pipeline's data
        tag = (int(batch.tag[0, 0]), int(batch.tag[0, 1]))
        self.produced.append(tag)
        self.next_unproduced = self._plan.successor(*tag)
        return batch.as_feed(self._plan.cfg.randaugment)

    def next_batch(self) -> tuple[int, int]:
        """The (epoch, step) the pipeline will hand out next."""
        return self.produced[0] if self.produced else self.next_unproduced
