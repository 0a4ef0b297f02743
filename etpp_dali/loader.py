"""The drop-in curriculum loader: a DALI pipeline that follows the schedule, as torch batches.

::

    cur = Curriculum.preset("etpp", family="resnet", budget=200)
    train = CurriculumLoader("data", cur, batch_size=256, device="auto")
    for epoch in range(cur.total_epochs):
        train.set_epoch(epoch)
        for images, labels in train:      # torch tensors on the pipeline's device
            ...

How the schedule reaches the pipeline: the Python side feeds DALI each batch's encoded images
together with its band, magnitude and random draws (``fn.external_source``), in the order the
batches will be consumed. Prefetched batches of the next epoch already carry that epoch's
settings, so ``set_epoch`` never lags, and nothing is rebuilt at a stage change (the cost of a
change is one batch of new shapes). A pipeline is rebuilt only when a run jumps (a
``set_epoch`` out of order, or ``load_state_dict``): about a second.

Epochs: a fresh permutation per epoch from (seed, epoch); with ``num_shards`` ranks each takes
every ``num_shards``-th image of it (disjoint; the remainder of the division is left out that
epoch), and completes its last batch from the start of its own part, so every rank runs the same
number of full batches and sees each of its images at least once.

Replay (EfficientTrain++, METHOD.md section 4): in a stage with replay factor r, DALI produces
``batch_size // r`` fresh samples per step; the rest of the batch is drawn uniformly, with
replacement, from a FIFO buffer of recent samples (kept in float16 on the output device, empty
at each stage start and after a resume).
"""

from __future__ import annotations

import collections
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .curriculum import Curriculum, ScheduleError
from .data import DataError
from .parallel import usable_cores
from .pipeline import PipelineConfig, build_train_pipeline, build_val_pipeline, make_train_batch
from .sources import Source, open_source

__all__ = ["CurriculumLoader", "ValidationLoader", "resolve_device", "distributed_shard"]

_STATE_VERSION = 1


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device = {device!r} is unknown; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device = {device!r} but no CUDA GPU is visible on this machine; use device='cpu'")
    return device


def distributed_shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    """The rank and world size: given, else from an initialised ``torch.distributed``."""
    if shard_id is None and num_shards is None and torch.distributed.is_available() \
            and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    shard_id, num_shards = shard_id or 0, num_shards or 1
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id = {shard_id} is outside 0..{num_shards - 1}")
    return shard_id, num_shards


def _to_torch(tensor_list: Any, device: torch.device) -> torch.Tensor:
    """Copy a DALI TensorList (dense batch) into a new torch tensor on ``device``."""
    from nvidia.dali import types
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = tensor_list.as_tensor()
    dtype = {types.FLOAT: torch.float32, types.INT64: torch.int64, types.INT32: torch.int32,
             types.FLOAT16: torch.float16, types.UINT8: torch.uint8}[dense.dtype]
    out = torch.empty(dense.shape(), dtype=dtype, device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if device.type == "cuda" else None)
    return out


_FAILED_SAMPLE = re.compile(r"Failed to decode sample #(\d+)")


def _failed_sample(exc: BaseException) -> int | None:
    """The in-batch index of the sample DALI's decoder gave up on, if that is the error."""
    match = _FAILED_SAMPLE.search(str(exc))
    return int(match.group(1)) if match else None


def _pick_culprit(source: Source, candidates: Sequence[int]) -> tuple[int, str]:
    """Among source indices that DALI may have failed on, the one PIL cannot decode either
    (else the first): with the reason to report."""
    from .data import inspect_image

    for i in candidates:
        try:
            inspect_image(bytes(source.read(i)), deep=True)
        except DataError as exc:
            return i, str(exc)
    return candidates[0], "the decoder failed on it"


def _format(x: torch.Tensor, channels_last: bool, dtype: torch.dtype) -> torch.Tensor:
    """The memory format and dtype the caller asked for."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x if dtype == torch.float32 else x.to(dtype)


class _Feed:
    """The callable DALI pulls batches from; remembers what it produced and not yet handed out."""

    def __init__(self, batches: Iterator[Any], start: tuple[int, int], with_augment: bool,
                 successor: Any) -> None:
        self._batches = batches
        self._with_augment = with_augment
        self._successor = successor
        self.produced: collections.deque[tuple[int, int]] = collections.deque()
        self.next_unproduced = start

    def __call__(self) -> tuple:
        batch = next(self._batches)  # StopIteration ends the pipeline's data
        tag = (int(batch.tag[0, 0]), int(batch.tag[0, 1]))
        self.produced.append(tag)
        self.next_unproduced = self._successor(tag)
        return batch.as_feed(self._with_augment)

    def next_batch(self) -> tuple[int, int]:
        """The (epoch, step) the pipeline will hand out next."""
        return self.produced[0] if self.produced else self.next_unproduced


class ReplayBuffer:
    """FIFO of recent (sample, label) pairs; draws uniformly with replacement."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.size = 0
        self.head = 0

    def push(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.images is None or self.images.shape[1:] != images.shape[1:]:
            self.images = torch.empty((self.capacity, *images.shape[1:]), dtype=torch.float16, device=images.device)
            self.labels = torch.empty(self.capacity, dtype=labels.dtype, device=labels.device)
            self.size = self.head = 0
        n = min(len(images), self.capacity)
        idx = (self.head + torch.arange(n)) % self.capacity
        self.images[idx.to(images.device)] = images[-n:].to(torch.float16)
        self.labels[idx.to(labels.device)] = labels[-n:]
        self.head = (self.head + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.size, (count,), generator=generator)
        return self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)]


class CurriculumLoader:
    """Training batches that follow a :class:`~etpp_dali.curriculum.Curriculum`.

    ``data``: an ImageFolder root (its ``train/`` is used when present), a ``.txt`` file list or
    WebDataset ``.tar`` shards. Bad files are listed once (stderr) and left out. Yields
    ``(images, labels)``: float32 N x 3 x B x B (normalised; ``channels_last``/``dtype`` on request)
    and int64 labels, on ``device`` (``"auto"``: the GPU when there is one).
    """

    def __init__(self, data: str | Path | Sequence[str | Path] | Source, curriculum: Curriculum,
                 batch_size: int, *, device: str = "auto", device_id: int | None = None,
                 num_threads: int | None = None, seed: int = 0, lowpass: str = "fourier",
                 fourier_backend: str = "auto", randaugment: bool = True, interpolation: str | None = None,
                 hw_decoder_load: float = 0.65, shard_id: int | None = None, num_shards: int | None = None,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, prefetch: int = 2,
                 replay_buffer: int | None = None, verbose: bool = True) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError("curriculum must be a Curriculum (Curriculum.preset(...) or Curriculum.from_file(...))")
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size} is invalid; use an integer >= 1")
        self.curriculum = curriculum
        self.batch_size = batch_size
        self.device = torch.device(resolve_device(device))
        self.source = data if isinstance(data, Source) else open_source(data, "train")
        if verbose and self.source.bad:
            print(f"etpp: {len(self.source.bad)} file(s) left out of {self.source.name}:\n"
                  f"{self.source.report_bad()}", file=sys.stderr)
        self.shard_id, self.num_shards = distributed_shard(shard_id, num_shards)
        self.shard_len = len(self.source) // self.num_shards
        if self.shard_len < 1:
            raise DataError(f"{self.source.name}: {len(self.source)} images cannot feed {self.num_shards} ranks")
        gpu = self.device.type == "cuda"
        self.cfg = PipelineConfig(
            resolution=curriculum.resolution, batch_size=batch_size, num_threads=num_threads or usable_cores(),
            device="gpu" if gpu else "cpu",
            device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else device_id,
            seed=seed, lowpass=lowpass, fourier_backend=fourier_backend, randaugment=randaugment,
            interpolation=interpolation or "cubic", hw_decoder_load=hw_decoder_load,
            prefetch=prefetch)
        self.seed = seed
        self.channels_last = channels_last
        self.dtype = dtype
        self.replay_capacity = replay_buffer
        self._labels, self._sizes = self.source.labels, self.source.sizes
        self.epoch, self.step = 0, 0
        self.excluded: dict[int, str] = {}  # source index -> why the decoder failed on it
        self._resumed = False
        self._pipe = None
        self._feed: _Feed | None = None
        self._buffer: ReplayBuffer | None = None
        self._buffer_stage = -1
        self.batch_meta: dict[str, Any] = {}
        self.wait_seconds = 0.0  # time spent waiting for batches (for stall measurements)
        self.rebuilds = 0

    # ------------------------------------------------------------------------- schedule
    @property
    def stage(self):
        """The :class:`~etpp_dali.curriculum.Stage` of the current epoch."""
        return self.curriculum.stage_at(min(self.epoch, self.curriculum.total_epochs - 1))

    @property
    def band(self) -> int:
        return self.stage.band

    @property
    def magnitude(self) -> float:
        return self.stage.magnitude

    @property
    def replay(self) -> int:
        return self.stage.replay

    def fresh_batch_size(self, epoch: int | None = None) -> int:
        stage = self.curriculum.stage_at(self.epoch if epoch is None else epoch)
        return max(1, self.batch_size // stage.replay)

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        return math.ceil(self.shard_len / self.fresh_batch_size(epoch))

    def __len__(self) -> int:
        return self.batches_in_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration yield epoch ``epoch`` from its start; right after
        :meth:`load_state_dict`, the restored epoch continues where the state left it."""
        if not 0 <= epoch < self.curriculum.total_epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's 0..{self.curriculum.total_epochs - 1}")
        if not (self._resumed and epoch == self.epoch):
            self.epoch, self.step = epoch, 0
        self._resumed = False

    # --------------------------------------------------------------------------- batches
    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.source))
        mine = perm[self.shard_id::self.num_shards][: self.shard_len]
        if self.excluded:  # a file the decoder failed on takes the place of the next good one
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

    def _plan(self, epoch: int, step: int) -> Iterator[Any]:
        """Batches from (epoch, step) to the end of the schedule, in consumption order."""
        total = self.curriculum.total_epochs
        while epoch < total:
            stage = self.curriculum.stage_at(epoch)
            order = self._epoch_order(epoch)
            fresh = self.fresh_batch_size(epoch)
            for s in range(step, len(order) // fresh):
                idx = order[s * fresh:(s + 1) * fresh]
                rng = np.random.default_rng([self.seed, epoch, s, self.shard_id])
                yield make_train_batch([self.source.read(int(i)) for i in idx], self._labels[idx], self._sizes[idx],
                                       band=stage.band, magnitude=stage.magnitude, epoch=epoch, step=s,
                                       rng=rng, cfg=self.cfg)
            epoch, step = epoch + 1, 0

    def _ensure_pipeline(self) -> None:
        """(Re)build the pipeline unless the batch it hands out next is (epoch, step)."""
        if self._pipe is not None and self._feed.next_batch() == (self.epoch, self.step):
            return
        self.close()
        self._feed = _Feed(self._plan(self.epoch, self.step), (self.epoch, self.step), self.cfg.randaugment,
                           self._successor)
        self._pipe = build_train_pipeline(self.cfg, self._feed)
        self.rebuilds += 1

    def _successor(self, tag: tuple[int, int]) -> tuple[int, int]:
        epoch, step = tag
        return (epoch, step + 1) if step + 1 < self.batches_in_epoch(epoch) else (epoch + 1, 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._resumed = False
        epoch = self.epoch
        stage = self.curriculum.stage_at(epoch)
        self._ensure_pipeline()
        if stage.replay > 1 and self._buffer_stage != stage.index:
            capacity = self.replay_capacity or stage.buffer or 8 * self.batch_size
            self._buffer, self._buffer_stage = ReplayBuffer(capacity), stage.index
        gen = torch.Generator().manual_seed(hash((self.seed, epoch, self.shard_id)) % 2**63)
        while self.epoch == epoch and self.step < self.batches_in_epoch(epoch):
            t0 = time.perf_counter()
            try:
                images, labels, band, magnitude, tag = self._pipe.run()
            except RuntimeError as exc:
                self._recover(exc)  # leave the bad file out, rebuild at (epoch, step), go on
                continue
            produced = self._feed.produced.popleft()
            tag0 = np.array(tag[0])
            if (int(tag0[0]), int(tag0[1])) != (epoch, self.step) or produced != (epoch, self.step):
                raise RuntimeError(f"loader out of step: got batch {tuple(tag0)} for ({epoch}, {self.step})")
            x = _to_torch(images, self.device)
            y = _to_torch(labels, torch.device("cpu")).to(self.device, non_blocking=True)
            self.wait_seconds += time.perf_counter() - t0
            self.batch_meta = {"epoch": epoch, "step": self.step, "band": int(np.array(band[0])),
                               "magnitude": float(np.array(magnitude[0])), "stage": stage.index,
                               "fresh": len(y)}
            if stage.replay > 1:
                self._buffer.push(x, y)
                extra = self.batch_size - len(y)
                if extra > 0:
                    rx, ry = self._buffer.draw(extra, gen)
                    x = torch.cat([x, rx.to(x.dtype)])
                    y = torch.cat([y, ry])
            self.step += 1
            yield _format(x, self.channels_last, self.dtype), y

    def _recover(self, exc: RuntimeError) -> None:
        """A file passed the up-front check but the decoder failed on it: report it once, leave it
        out for the rest of the run (it is kept in the state, so a resume leaves it out too) and
        rebuild the pipeline at the current batch. Any other pipeline error is raised."""
        k = _failed_sample(exc)
        if k is None or self._feed is None:
            raise exc
        candidates = []
        for epoch, step in self._feed.produced:
            order = self._epoch_order(epoch)
            fresh = self.fresh_batch_size(epoch)
            batch = order[step * fresh:(step + 1) * fresh]
            if k < len(batch):
                candidates.append(int(batch[k]))
        if not candidates:
            raise exc
        bad, reason = _pick_culprit(self.source, candidates)
        self.excluded[bad] = reason
        print(f"etpp: left out {self.source.records[bad].path}: {reason} (run `etpp check-data --deep`)",
              file=sys.stderr)
        self.close()
        self._ensure_pipeline()

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: restore with :meth:`load_state_dict` to continue there."""
        return {"version": _STATE_VERSION, "epoch": self.epoch, "step": self.step, "seed": self.seed,
                "schedule": self.curriculum.fingerprint(), "batch_size": self.batch_size,
                "shard_id": self.shard_id, "num_shards": self.num_shards, "dataset_size": len(self.source),
                "excluded": sorted(self.excluded)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not {_STATE_VERSION}")
        if state["schedule"] != self.curriculum.fingerprint():
            raise ScheduleError("the loader state was saved with another schedule; resume with the same "
                                "preset, budget and resolution")
        current = {"seed": self.seed, "batch_size": self.batch_size, "num_shards": self.num_shards,
                   "dataset_size": len(self.source)}
        for key, value in current.items():
            if state[key] != value:
                raise ValueError(f"loader state has {key} = {state[key]!r}, this loader {value!r}; "
                                 "resume with the same data and settings")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.excluded = {int(i): "failed to decode earlier in this run" for i in state.get("excluded", [])}
        if self.step >= self.batches_in_epoch(self.epoch) and self.epoch + 1 < self.curriculum.total_epochs:
            self.epoch, self.step = self.epoch + 1, 0
        self._resumed = True

    def close(self) -> None:
        """Release the pipeline (its threads and buffers)."""
        self._pipe = None
        self._feed = None

    def __del__(self) -> None:
        self.close()


class ValidationLoader:
    """Full-resolution evaluation batches: every image of the split exactly once.

    Resize the shorter side to ``floor(R / crop_pct)``, centre crop R, normalise. With several
    ranks each takes a contiguous part (sizes differ by at most one image); the last batch of a
    rank is smaller rather than padded, so no image counts twice.
    """

    def __init__(self, data: str | Path | Sequence[str | Path] | Source, resolution: int, batch_size: int, *,
                 classes: Sequence[str] | None = None, device: str = "auto", device_id: int | None = None,
                 num_threads: int | None = None, shard_id: int | None = None, num_shards: int | None = None,
                 interpolation: str | None = None, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 indices: Sequence[int] | None = None, verbose: bool = True) -> None:
        self.device = torch.device(resolve_device(device))
        self.source = data if isinstance(data, Source) else open_source(data, "val", classes=classes)
        if verbose and self.source.bad and not isinstance(data, Source):
            print(f"etpp: {len(self.source.bad)} file(s) left out of {self.source.name}:\n"
                  f"{self.source.report_bad()}", file=sys.stderr)
        self.shard_id, self.num_shards = distributed_shard(shard_id, num_shards)
        everything = np.arange(len(self.source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.indices = np.array_split(everything, self.num_shards)[self.shard_id]
        gpu = self.device.type == "cuda"
        self.cfg = PipelineConfig(
            resolution=resolution, batch_size=batch_size, num_threads=num_threads or usable_cores(),
            device="gpu" if gpu else "cpu",
            device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else device_id,
            interpolation=interpolation or "cubic")
        self.batch_size = batch_size
        self.channels_last, self.dtype = channels_last, dtype
        self._labels = self.source.labels
        self._pipe = None
        self._batches: Iterator[Any] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def _feed(self) -> tuple:
        return next(self._batches)

    def _batch(self, s: int) -> np.ndarray:
        return self.indices[s * self.batch_size:(s + 1) * self.batch_size]

    def _plan(self, start: int) -> Iterator[tuple]:
        for s in range(start, len(self)):
            idx = self._batch(s)
            yield [self.source.read(int(i)) for i in idx], self._labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = 0
        self._batches = self._plan(0)
        if self._pipe is None:
            self._pipe = build_val_pipeline(self.cfg, self._feed)
        else:
            self._pipe.reset()
        while s < len(self):
            try:
                images, labels = self._pipe.run()
            except RuntimeError as exc:
                k = _failed_sample(exc)
                candidates = [int(b[k]) for b in (self._batch(t) for t in range(s, s + self.cfg.prefetch + 1))
                              if k is not None and k < len(b)]
                if not candidates:
                    raise
                bad, reason = _pick_culprit(self.source, candidates)
                print(f"etpp: left out {self.source.records[bad].path}: {reason} (run `etpp check-data --deep`)",
                      file=sys.stderr)
                self.indices = self.indices[self.indices != bad]  # later batches shift by one image
                self._batches = self._plan(s)
                self._pipe = build_val_pipeline(self.cfg, self._feed)
                continue
            x = _to_torch(images, self.device)
            y = _to_torch(labels, torch.device("cpu")).to(self.device, non_blocking=True)
            s += 1
            yield _format(x, self.channels_last, self.dtype), y
        try:  # let the pipeline see the end of the data, so reset() can start it again
            self._pipe.run()
        except StopIteration:
            pass
