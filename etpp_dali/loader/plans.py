"""What the loaders feed DALI, batch by batch: which images, in which order, with which draws.

A plan says which source images make the batch at each position (training: (epoch, step);
validation: the batch number) and leaves out files the decoder failed on; a :class:`Feed` is
the callable DALI pulls a plan's batches from, from a given position on.

Training epochs: a fresh permutation per epoch from (seed, epoch); with ``num_shards`` ranks each takes
every ``num_shards``-th image of it (disjoint; the remainder of the division is left out that
epoch), and completes its last batch from the start of its own part, so every rank runs the same
number of full batches and sees each of its images at least once. A file the decoder failed on
takes the place of the next good image of the rank's part.

Training batches: a step of the single graph takes the stage's fresh batch (``batch_size // r``
images in a stage with replay factor r under tensor replay, the loader completing the batch from
its replay buffer; else the whole batch, from further passes when an epoch needs more than one;
echo stages take their images as :mod:`etpp_dali.loader.echo.schedule` lays them out), and its draws come from a
generator seeded by (seed, epoch, step, rank), so a batch is the same whenever it is made: after
a resume, a rebuild, or a prefetch across a stage change.

Validation: the rank's images in order, every one once; the last batch is smaller rather than
padded. A file the decoder failed on is dropped and the later batches shift by one image.
"""

from __future__ import annotations

import collections
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.data.reads import BufferPool
from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import Source
from etpp_dali.loader.feeds import PipelineConfig, make_train_batch, make_val_batch

__all__ = ["EpochSteps", "TrainPlan", "ValPlan", "Feed", "Job"]

# a batch's job: ``job(pool)`` -> (pipeline inputs, the buffer holding its bytes)
Job = Callable[..., tuple[tuple, np.ndarray]]
# DALI copies an external source's batch when it takes it, right after the call; a buffer waits
# this many further calls before it is reused all the same
_RECYCLE_AFTER = 2


def _every_epoch(epoch: int) -> bool:
    return True


@dataclass(frozen=True)
class EpochSteps:
    """The steps and the batch of each epoch of one rank: what the schedule fixes, whatever the
    loader decodes. Echo and its ``auto`` choice read them; they need no plan."""

    curriculum: Curriculum
    batch_size: int
    shard_len: int  # this rank's images per epoch (before the last batch is completed)

    @classmethod
    def of_shard(cls, curriculum: Curriculum, batch_size: int, source: Source, num_shards: int) -> EpochSteps:
        """The steps of one of ``num_shards`` ranks reading ``source``."""
        shard_len = len(source) // num_shards
        if shard_len < 1:
            raise DataError(f"{source.name}: {len(source)} images cannot feed {num_shards} ranks")
        return cls(curriculum, batch_size, shard_len)

    def batch_for_epoch(self, epoch: int) -> int:
        """The per-device batch of ``epoch``: its stage's ``batch`` when set, else ``batch_size``."""
        return self.curriculum.stage_at(epoch).batch or self.batch_size

    def batches_in_epoch(self, epoch: int) -> int:
        """Steps of ``epoch``: the schedule's (its stage's replay factor r gives r times the steps of
        a pass over the rank's images), whatever the runtime echo factor."""
        replay = self.curriculum.stage_at(epoch).replay
        return math.ceil(self.shard_len / max(1, self.batch_for_epoch(epoch) // replay))

    def successor(self, position: tuple[int, int]) -> tuple[int, int]:
        """The (epoch, step) after ``position``."""
        epoch, step = position
        return (epoch, step + 1) if step + 1 < self.batches_in_epoch(epoch) else (epoch + 1, 0)


def _encoded(source: Source, idx: np.ndarray, cfg: PipelineConfig,
             pool: BufferPool | None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """A batch's ``encoded`` field and the buffer holding it: the files' paths when the graph reads
    them (``cfg.read_files``), else their bytes."""
    return (source.path_batch(idx), None) if cfg.read_files else source.read_batch(idx, pool)


class TrainPlan:
    """The batches of one rank over the whole schedule (see the module docstring).

    ``tensor_replay``: replay stages decode ``batch_size // r`` images a step (the loader completes
    the batch from its replay buffer), else the whole batch; ``runs_here(epoch)``: the epochs the
    single graph makes (the others echo, :mod:`etpp_dali.loader.echo`)."""

    def __init__(self, source: Source, steps: EpochSteps, cfg: PipelineConfig, *, seed: int, shard_id: int,
                 num_shards: int, tensor_replay: bool = True,
                 runs_here: Callable[[int], bool] = _every_epoch) -> None:
        self.source, self.steps, self.cfg = source, steps, cfg
        self.curriculum, self.batch_size, self.shard_len = steps.curriculum, steps.batch_size, steps.shard_len
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self.tensor_replay, self.runs_here = tensor_replay, runs_here
        self.excluded: dict[int, str] = {}  # source index -> why the decoder failed on it
        self._labels, self._sizes = source.labels, source.sizes

    def batch_for_epoch(self, epoch: int) -> int:
        return self.steps.batch_for_epoch(epoch)

    def batches_in_epoch(self, epoch: int) -> int:
        return self.steps.batches_in_epoch(epoch)

    def successor(self, position: tuple[int, int]) -> tuple[int, int]:
        return self.steps.successor(position)

    def fresh_batch_size(self, epoch: int) -> int:
        """Images a step of ``epoch`` decodes in the single graph: the epoch's batch divided by the
        stage's replay factor with tensor replay (``tensor_replay``), else the whole batch."""
        replay = self.curriculum.stage_at(epoch).replay if self.tensor_replay else 1
        return max(1, self.batch_for_epoch(epoch) // replay)

    def shard_pass(self, epoch: int, pass_: int = 0) -> np.ndarray:
        """This rank's source indices in pass ``pass_`` of ``epoch`` (a fresh permutation per pass;
        pass 0 is the epoch's own), files the decoder failed on replaced by good ones."""
        key = [self.seed, epoch, 0x5EED] + ([pass_] if pass_ else [])
        perm = np.random.default_rng(key).permutation(len(self.source))
        mine = perm[self.shard_id::self.num_shards][: self.shard_len]
        if self.excluded:
            failed = np.isin(mine, list(self.excluded))
            good = mine[~failed]
            if not len(good):
                raise DataError(f"{self.source.name}: every image of this rank failed to decode")
            bad_at = np.flatnonzero(failed)
            mine = mine.copy()
            mine[bad_at] = good[bad_at % len(good)]
        return mine

    def fresh_sequence(self, epoch: int, count: int) -> np.ndarray:
        """The first ``count`` fresh images of ``epoch``: its pass, then the start of the pass
        again (the last batch completed from the rank's own part) or, when ``count`` needs more
        than one extra batch of images, further passes."""
        mine = self.shard_pass(epoch)
        if count <= len(mine) + self.batch_size:
            return np.concatenate([mine, mine[: count - len(mine)]]) if count > len(mine) else mine[:count]
        passes = [mine] + [self.shard_pass(epoch, j) for j in range(1, -(-count // len(mine)))]
        return np.concatenate(passes)[:count]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's source indices of ``epoch`` in the single graph, one step's images after another."""
        return self.fresh_sequence(epoch, self.batches_in_epoch(epoch) * self.fresh_batch_size(epoch))

    def batch_indices(self, position: tuple[int, int], order: np.ndarray | None = None) -> np.ndarray:
        """The source indices of batch (epoch, step); ``order``: :meth:`epoch_order` when known."""
        epoch, step = position
        fresh = self.fresh_batch_size(epoch)
        order = self.epoch_order(epoch) if order is None else order
        return order[step * fresh:(step + 1) * fresh]

    def leave_out(self, index: int, reason: str) -> None:
        """The decoder failed on source image ``index``: it is replaced for the rest of the run."""
        self.excluded[index] = reason

    def jobs(self, start: tuple[int, int]) -> Iterator[tuple[tuple[int, int], Job]]:
        """(position, job) from ``start`` to the end of the schedule, in consumption order: a job
        makes the batch's pipeline inputs (its reads and draws), on any thread, the same whenever
        it runs."""
        epoch, step = start
        while epoch < self.curriculum.total_epochs and self.runs_here(epoch):
            stage = self.curriculum.stage_at(epoch)
            order = self.epoch_order(epoch)
            for s in range(step, self.batches_in_epoch(epoch)):
                idx = self.batch_indices((epoch, s), order)
                yield (epoch, s), functools.partial(self._make, idx, stage.band, stage.magnitude, epoch, s)
            epoch, step = epoch + 1, 0

    def _make(self, idx: np.ndarray, band: int, magnitude: float, epoch: int, step: int,
              pool: BufferPool | None = None) -> tuple[tuple, np.ndarray]:
        encoded, buffer = _encoded(self.source, idx, self.cfg, pool)
        rng = np.random.default_rng([self.seed, epoch, step, self.shard_id])
        batch = make_train_batch(encoded, self._labels[idx], self._sizes[idx], band=band, magnitude=magnitude,
                                 epoch=epoch, step=step, rng=rng, cfg=self.cfg)
        return batch.as_feed(self.cfg.randaugment), buffer

    def batches(self, start: tuple[int, int]) -> Iterator[tuple[tuple[int, int], tuple]]:
        """(position, pipeline inputs) from ``start`` to the end of the schedule, in consumption order."""
        for position, job in self.jobs(start):
            yield position, job()[0]


class ValPlan:
    """Validation batches of ``indices`` (source indices, in order) of ``batch_size`` images."""

    def __init__(self, source: Source, indices: Sequence[int], batch_size: int, cfg: PipelineConfig) -> None:
        self.source, self.batch_size, self.cfg = source, batch_size, cfg
        self.indices = np.asarray(indices, dtype=np.int64)
        self._labels, self._sizes = source.labels, source.sizes

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def successor(self, position: int) -> int:
        return position + 1

    def batch_indices(self, position: int) -> np.ndarray:
        return self.indices[position * self.batch_size:(position + 1) * self.batch_size]

    def leave_out(self, index: int, reason: str) -> None:
        """The decoder failed on source image ``index``: dropped, later batches shift by one image."""
        self.indices = self.indices[self.indices != index]

    def jobs(self, start: int) -> Iterator[tuple[int, Job]]:
        """(batch number, job) from ``start`` on; a job reads the batch and computes its geometry."""
        for s in range(start, len(self)):
            yield s, functools.partial(self._make, self.batch_indices(s))

    def _make(self, idx: np.ndarray, pool: BufferPool | None = None) -> tuple[tuple, np.ndarray]:
        encoded, buffer = _encoded(self.source, idx, self.cfg, pool)
        return make_val_batch(encoded, self._labels[idx], self._sizes[idx], self.cfg).as_feed(), buffer

    def batches(self, start: int) -> Iterator[tuple[int, tuple]]:
        for position, job in self.jobs(start):
            yield position, job()[0]


class Feed:
    """The callable DALI pulls a plan's batches from, from position ``start`` on. Remembers the
    positions it produced that the loader has not taken yet (``produced``, oldest first): the
    batches DALI holds, among which a decode failure happened.

    ``threads``: batches made ahead, in order, on that many worker threads (where the feed reads
    the bytes, the reads release the GIL, so they overlap the caller's work); 0 makes each batch
    when DALI asks for it. A batch is the same either way (its draws are seeded by its
    position). The batches' bytes are read into recycled buffers: DALI copies an external
    source's input when it takes it, and a buffer is reused only ``_RECYCLE_AFTER`` calls later.
    A closed feed makes no more batches (a new one starts where it should).
    """

    def __init__(self, plan: Any, start: Any, threads: int = 0) -> None:
        self.plan, self.threads = plan, threads
        self._jobs = plan.jobs(start)
        self.produced: collections.deque = collections.deque()
        self.next_unproduced = start
        self._pool = BufferPool()
        self._handed: collections.deque = collections.deque()  # buffers of the latest batches handed out
        self._ahead: collections.deque = collections.deque()   # (position, future), in order
        self._workers = ThreadPoolExecutor(threads, thread_name_prefix="etpp-feed") if threads > 0 else None
        self._closed = False

    def __call__(self) -> tuple:
        if self._closed:
            raise RuntimeError("this feed was closed; start a new one (restart()) to go on")
        if self._workers is None:
            position, job = next(self._jobs)  # StopIteration ends the pipeline's data
            values, buffer = job(self._pool)
        else:
            self._submit(2 * self.threads + 1)
            if not self._ahead:
                raise StopIteration
            position, future = self._ahead.popleft()
            values, buffer = future.result()
            self._submit(2 * self.threads + 1)
        self._handed.append(buffer)
        if len(self._handed) > _RECYCLE_AFTER:
            self._pool.give(self._handed.popleft())
        self.produced.append(position)
        self.next_unproduced = self.plan.successor(position)
        return values

    def _submit(self, depth: int) -> None:
        while len(self._ahead) < depth:
            try:
                position, job = next(self._jobs)
            except StopIteration:
                return
            self._ahead.append((position, self._workers.submit(job, self._pool)))

    def next_batch(self) -> Any:
        """The position the pipeline hands out next."""
        return self.produced[0] if self.produced else self.next_unproduced

    def take(self) -> Any:
        """The loader took the oldest batch out of the pipeline: its position."""
        return self.produced.popleft()

    def in_flight(self, place: int | None = None) -> list[int]:
        """The source indices at ``place`` (None: at every place) of the batches produced and not taken."""
        batches = [self.plan.batch_indices(position) for position in self.produced]
        if place is None:
            return [int(i) for b in batches for i in b]
        return [int(b[place]) for b in batches if place < len(b)]

    def restart(self) -> "Feed":
        """A new feed of the same plan from the first batch not taken (after a file was left out)."""
        self.close()
        return Feed(self.plan, self.next_batch(), self.threads)

    def close(self) -> None:
        """Stop making batches (the worker threads end once their current batch is made)."""
        self._closed = True
        if self._workers is not None:
            self._workers.shutdown(wait=False, cancel_futures=True)
            self._workers = None
        self._ahead.clear()
