"""The two stages of echo before augmentation, as the loader runs them.

The decode stage (:class:`DecodeStage`) decodes the images a step needs that the buffer does not
hold, whole, on the loader's device (the ``mixed`` decoder into GPU memory on a GPU, host memory
on the CPU); the buffer keeps each decoded image from its first use to its last
(:class:`~etpp_dali.loader.echo.schedule.EchoEpoch`). The augment stage is a pipeline of its own, fed by
:class:`EchoFeed` through ``fn.external_source`` on the same device: per step, the batch's
decoded images (each as often as it is used) with the step's draws. On the CPU the images go
in without a copy (``no_copy``): the feed keeps the arrays of the batches DALI may still read.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

from etpp_dali.data.reads import BufferPool
from etpp_dali.loader.echo.schedule import EchoEpoch
from etpp_dali.loader.feeds import PipelineConfig, make_train_batch
from etpp_dali.loader.graphs import define_decode_pipeline
from etpp_dali.loader.runner import failed_sample, pick_culprit

__all__ = ["DecodeStage", "EchoFeed"]


class DecodeStage:
    """Decodes lists of encoded images, whole, one pipeline run at a time; reports and leaves out
    a file the decoder fails on (``on_failure(index, reason)``) and raises :class:`DecodeFailed`.
    ``seconds`` and ``images``: the time spent in :meth:`decode` and the images it decoded (the
    decode cost ``echo="auto"`` predicts from)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self._pipe: Any = None
        self._buffers = BufferPool()
        self.seconds, self.images = 0.0, 0

    def decode(self, source: Any, indices: np.ndarray) -> list[Any]:
        """The decoded images of source ``indices``: numpy HWC arrays on the CPU, CUDA tensors on a GPU."""
        t0 = time.perf_counter()
        images = self._decode(source, indices)
        self.seconds += time.perf_counter() - t0
        self.images += len(images)
        return images

    def _decode(self, source: Any, indices: np.ndarray) -> list[Any]:
        if self._pipe is None:
            self._pipe = define_decode_pipeline(self.cfg)
            self._pipe.build()
        encoded, buffer = source.read_batch(indices, self._buffers)
        self._pipe.feed_input("encoded", encoded)  # copied here: the buffer serves the next batch
        self._buffers.give(buffer)
        try:
            (batch,) = self._pipe.run()
        except RuntimeError as exc:
            self._pipe = None  # a failed pipeline is not reused
            k = failed_sample(exc)
            if k is None or k >= len(indices):
                raise
            raise DecodeFailed(*pick_culprit(source, [int(indices[k])])) from exc
        if self.cfg.device == "gpu":  # copies out of DALI's buffers, on torch's current stream
            with torch.cuda.device(batch[0].device_id()):
                return [to_torch_tensor(batch[i], copy=True) for i in range(len(indices))]
        return [batch.at(i) for i in range(len(indices))]

    def totals(self) -> tuple[float, int]:
        """(seconds, images) decoded so far."""
        return self.seconds, self.images

    def close(self) -> None:
        self._pipe = None


class DecodeFailed(Exception):
    """The decoder failed on source image ``index`` (``reason``: what PIL says, if anything)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index, self.reason = index, reason


class EchoFeed:
    """The augment pipeline's feed over the echo epochs from ``start`` on (the same interface as
    :class:`~etpp_dali.loader.plans.Feed`): ``layout(epoch)`` gives an epoch's uses, ``runs_here(epoch)``
    says which epochs echo."""

    def __init__(self, plan: Any, start: tuple[int, int], layout: Callable[[int], EchoEpoch],
                 runs_here: Callable[[int], bool], decoder: DecodeStage) -> None:
        self.plan, self.cfg = plan, plan.cfg
        self._layout, self._runs_here, self._decoder, self._start = layout, runs_here, decoder, start
        self._batches = self._generate(start)
        self.produced: collections.deque = collections.deque()
        self.next_unproduced = start
        self._alive: collections.deque = collections.deque(maxlen=self.cfg.prefetch + 2)
        self.decoded = 0  # images decoded (for measurements)

    def __call__(self) -> tuple:
        position, values = next(self._batches)
        self.produced.append(position)
        self.next_unproduced = self.plan.successor(position)
        return values

    def next_batch(self) -> tuple[int, int]:
        return self.produced[0] if self.produced else self.next_unproduced

    def take(self) -> tuple[int, int]:
        return self.produced.popleft()

    def in_flight(self, place: int | None = None) -> list[int]:
        return []  # the augment stage decodes nothing: failures surface in the decode stage

    def restart(self) -> "EchoFeed":
        return EchoFeed(self.plan, self.next_batch(), self._layout, self._runs_here, self._decoder)

    def close(self) -> None:
        """Nothing runs ahead here: the decode stage reads on the caller's thread."""

    def _generate(self, start: tuple[int, int]) -> Iterator[tuple[tuple[int, int], tuple]]:
        epoch, step = start
        while epoch < self.plan.curriculum.total_epochs and self._runs_here(epoch):
            layout, held = self._layout(epoch), {}
            for s in range(step, len(layout.uses)):
                layout = self._fill(layout, held, s)
                yield (epoch, s), self._batch(layout, held, s)
                for p in [p for p in held if layout.last_step[p] <= s]:
                    del held[p]
            epoch, step = epoch + 1, 0

    def _fill(self, layout: EchoEpoch, held: dict, step: int) -> EchoEpoch:
        """Decode what ``step`` uses and ``held`` lacks; after a decode failure, the epoch's layout
        without the failed file (its place taken as the plan says)."""
        while True:
            positions = np.unique(layout.uses[step])
            missing = [p for p in positions if p not in held or held[p][0] != layout.sources[p]]
            if not missing:
                return layout
            indices = layout.sources[missing]
            try:
                images = self._decoder.decode(self.plan.source, indices)
            except DecodeFailed as failed:
                print(f"etpp: left out {self.plan.source.records[failed.index].path}: {failed.reason} "
                      "(run `etpp check-data --deep`)", file=sys.stderr)
                self.plan.leave_out(failed.index, failed.reason)
                layout = self._layout(layout.epoch)
                continue
            self.decoded += len(indices)
            held.update({int(p): (int(i), img) for p, i, img in zip(missing, indices, images)})

    def _batch(self, layout: EchoEpoch, held: dict, step: int) -> tuple:
        positions = layout.uses[step]
        idx = layout.sources[positions]
        images = [held[int(p)][1] for p in positions]
        self._alive.append(images)  # DALI reads them without a copy for up to `prefetch` runs
        stage = self.plan.curriculum.stage_at(layout.epoch)
        rng = np.random.default_rng([self.plan.seed, layout.epoch, step, self.plan.shard_id])
        batch = make_train_batch(images, self.plan.source.labels[idx], self.plan.source.sizes[idx],
                                 band=stage.band, magnitude=stage.magnitude, epoch=layout.epoch, step=step,
                                 rng=rng, cfg=self.cfg)
        return batch.as_feed(self.cfg.randaugment)

