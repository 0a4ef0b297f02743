"""The drop-in curriculum loader: a DALI pipeline that follows the schedule, as torch batches.

::

    cur = Curriculum.preset("etpp", family="resnet", budget=200)
    train = CurriculumLoader("data", cur, batch_size=256, device="auto")
    for epoch in range(cur.total_epochs):
        train.set_epoch(epoch)
        for images, labels in train:      # torch tensors on the pipeline's device
            ...

How the schedule reaches the pipeline: the Python side feeds DALI each batch's encoded images
together with its band and random draws (``fn.external_source``; the RandAugment draws are made
at the stage's magnitude), in the order the batches will be consumed. Prefetched batches of the
next epoch already carry that epoch's settings, so ``set_epoch`` never lags, and nothing is
rebuilt at a stage change (the cost of a change is one batch of new shapes). A pipeline is
rebuilt only when a run jumps (a ``set_epoch`` out of order, or ``load_state_dict``): a pipeline
start, no scan. Which images make which batch: :mod:`etpp_dali.loader.plans`.

Settings: everything besides the data and the curriculum is one
:class:`~etpp_dali.loader.settings.LoaderSettings`, given as keywords (``batch_size=256,
device="cuda", ...``) or as ``settings=LoaderSettings(...)``: the same object either way.

Replay (EfficientTrain++) and echo: a stage with replay factor r has r times fewer data epochs
in the schedule and r times the steps per epoch, so its steps and compute stay the same. With
``echo="augment"`` (the default) the loader decodes each image once and uses it r times, each
use with its own draws (:mod:`etpp_dali.loader.echo.schedule`, :mod:`etpp_dali.loader.echo.stages`);
``echo=N`` runs every stage at r = N and ``"off"`` at r = 1, with the same steps; ``echo="auto"``
chooses r per epoch, up to ``echo_max``, from how long the caller waited for batches in the epoch
before (:mod:`etpp_dali.loader.echo.auto`; the choices are logged, in
:attr:`CurriculumLoader.echo_choices` and in the state). ``echo="tensor"`` is the reference's
replay: ``batch_size // r`` fresh images per step, the rest of the batch drawn uniformly, with
replacement, from a FIFO buffer of recently produced (augmented) samples, which starts empty at
each stage (:mod:`etpp_dali.loader.echo.replay`). ``reprob``: random erasing after the crop
(:mod:`etpp_dali.ops.erasing`), drawn per batch, so each use of an image is erased anew.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from etpp_dali.curriculum.schedule import Curriculum, ScheduleError, Stage
from etpp_dali.loader.dali_iterator import DALIStyleIterator
from etpp_dali.loader.echo.auto import AutoEcho
from etpp_dali.loader.echo.replay import ReplayBuffer
from etpp_dali.loader.echo.schedule import EchoEpoch, EchoLayouts, EchoSchedule, decoded_image_bytes
from etpp_dali.loader.echo.stages import DecodeStage, EchoFeed
from etpp_dali.loader.graphs import TRAIN_OUTPUTS, define_echo_pipeline, define_train_pipeline
from etpp_dali.loader.plans import EpochSteps, Feed, TrainPlan
from etpp_dali.loader.runner import PipelineRunner
from etpp_dali.loader.settings import DataArg, LoaderSettings, distributed_shard, settings_from
from etpp_dali.loader.validation import ValidationLoader
from etpp_dali.ops.erasing import RandomErasing
from etpp_dali.util.devices import resolve_device

# ValidationLoader, distributed_shard and resolve_device are importable from here as before
__all__ = ["CurriculumLoader", "ValidationLoader", "LoaderSettings", "resolve_device", "distributed_shard"]

_STATE_VERSION = 1
_ERASING_STREAM = 0xE7A5E  # keeps the erasing draws apart from the pipeline's per-batch draws


def _check_resumable(state: dict[str, Any], fingerprint: str, current: dict[str, Any]) -> None:
    """Raise unless a loader state was saved with the schedule of ``fingerprint`` and ``current``
    settings (a state saved before loaders had an echo setting passes on that one)."""
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"loader state version {state.get('version')!r} is not {_STATE_VERSION}")
    if state["schedule"] != fingerprint:
        raise ScheduleError("the loader state was saved with another schedule; resume with the same "
                            "preset, budget and resolution")
    for key, value in current.items():
        if state.get(key, value if key == "echo" else None) != value:
            raise ValueError(f"loader state has {key} = {state[key]!r}, this loader {value!r}; "
                             "resume with the same data and settings")


class CurriculumLoader:
    """Training batches that follow a :class:`~etpp_dali.curriculum.schedule.Curriculum`.

    ``data``: an ImageFolder root (its ``train/`` is used when present), a ``.txt`` file list or
    WebDataset ``.tar`` shards. Bad files are listed once (stderr, unless ``verbose=False``) and
    left out. Yields ``(images, labels)``: float32 N x 3 x B x B (normalised;
    ``channels_last``/``dtype`` on request) and int64 labels, on ``device`` (``"auto"``: the GPU
    when there is one; ``device_id`` or ``"cuda:N"`` picks the GPU). The settings: ``batch_size``
    and the keywords of :class:`~etpp_dali.loader.settings.LoaderSettings`, or ``settings=``.
    """

    def __init__(self, data: DataArg, curriculum: Curriculum, batch_size: int | None = None, *,
                 settings: LoaderSettings | None = None, **options: Any) -> None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError("curriculum must be a Curriculum (Curriculum.preset(...) or Curriculum.from_file(...))")
        self.settings = settings = settings_from("CurriculumLoader", settings, batch_size, options)
        self.curriculum, self.batch_size, self.seed = curriculum, settings.batch_size, settings.seed
        self.device = settings.torch_device()
        self.source = settings.open_data(data, "train")
        self.shard_id, self.num_shards = settings.shard()
        largest = max([self.batch_size] + [s.batch for s in curriculum.stages])  # any stage's batch fits the pipeline
        self.cfg = settings.pipeline_config(self.device, curriculum.resolution, largest, self.source.reads_files)
        self.echo_setting, self.echo_max = settings.echo_setting, settings.echo_max
        self._decoder = DecodeStage(self.cfg)
        steps = EpochSteps.of_shard(curriculum, self.batch_size, self.source, self.num_shards)
        self.auto_echo = AutoEcho(steps, self.echo_max, self._decoder.totals, settings.verbose) \
            if self.echo_setting.mode == "auto" else None
        self.echo_schedule = EchoSchedule(steps, decoded_image_bytes(self.source.sizes), self.echo_setting,
                                          self.auto_echo and self.auto_echo.factor)
        self.plan = TrainPlan(self.source, steps, self.cfg, seed=self.seed, shard_id=self.shard_id,
                              num_shards=self.num_shards, tensor_replay=self.echo_setting.mode == "tensor",
                              runs_here=self.echo_schedule.single_graph)
        self._layouts = EchoLayouts(self.plan, self.echo_schedule)
        self.shard_len = steps.shard_len  # this rank's images per epoch (before the last batch is completed)
        self.excluded = self.plan.excluded  # source index -> why the decoder failed on it (left out from then on)
        self.erasing = RandomErasing(settings.reprob) if settings.reprob > 0 else None
        self.epoch, self.step = 0, 0
        self._resumed = False
        self._runner = PipelineRunner(TRAIN_OUTPUTS, functools.partial(define_train_pipeline, self.cfg))
        self._echo_runner = PipelineRunner(TRAIN_OUTPUTS, functools.partial(define_echo_pipeline, self.cfg))
        self._buffer: ReplayBuffer | None = None
        self._buffer_stage = -1
        self.batch_meta: dict[str, Any] = {}
        self.wait_seconds = 0.0  # time spent waiting for batches (for stall measurements)

    # ------------------------------------------------------------------------- schedule
    @property
    def stage(self) -> Stage:
        """The :class:`~etpp_dali.curriculum.schedule.Stage` of the current epoch."""
        return self.curriculum.stage_at(min(self.epoch, self.curriculum.total_epochs - 1))

    @property
    def band(self) -> int:
        """The side of the current stage's inputs: images come out band x band."""
        return self.stage.band

    @property
    def magnitude(self) -> float:
        """The current stage's RandAugment magnitude m."""
        return self.stage.magnitude

    @property
    def replay(self) -> int:
        """The current stage's replay factor r (1: every sample fresh)."""
        return self.stage.replay

    def batch_for_epoch(self, epoch: int | None = None) -> int:
        """The per-device batch of an epoch: its stage's ``batch`` when set, else ``batch_size``."""
        return self.plan.batch_for_epoch(self.epoch if epoch is None else epoch)

    def echo_factor(self, epoch: int | None = None) -> int:
        """The echo factor r the loader runs ``epoch`` at (the current one by default): each decoded
        image serves r samples. It can be below the ``echo`` setting when ``echo_buffer_mb`` holds
        too few images for it (see :mod:`etpp_dali.loader.echo.schedule`). Under ``echo="auto"``, an
        epoch whose factor is not chosen yet reads as the factor of the epoch before it (nothing is
        chosen here)."""
        epoch = self.epoch if epoch is None else epoch
        if self.auto_echo is not None and epoch not in self.auto_echo.choices:
            return self.auto_echo.factor(epoch, choose=False)
        return self.echo_layout(epoch).factor if self.echoes(epoch) else self.echo_schedule.factor_of(epoch)

    @property
    def echo_choices(self) -> dict[int, int]:
        """Under ``echo="auto"``: stage index -> the echo factor chosen for its latest epoch so far
        (empty otherwise)."""
        return self.auto_echo.stage_choices if self.auto_echo is not None else {}

    def echoes(self, epoch: int) -> bool:
        """Whether ``epoch`` runs the two stages of echo before augmentation (else the single graph)."""
        return self.echo_schedule.echoes(epoch)

    def echo_layout(self, epoch: int) -> EchoEpoch:
        """Which images make each batch of echo epoch ``epoch``."""
        return self._layouts(epoch)

    def fresh_batch_size(self, epoch: int | None = None) -> int:
        return self.plan.fresh_batch_size(self.epoch if epoch is None else epoch)

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        return self.plan.batches_in_epoch(self.epoch if epoch is None else epoch)

    def __len__(self) -> int:
        return self.batches_in_epoch()

    def dali_iterator(self, output_map: Sequence[str] = ("data", "label"), **options: Any) -> DALIStyleIterator:
        """This loader through DALI's PyTorch iterator protocol (``output_map``, ``reset()``,
        ``size``, ``last_batch_policy``, ``auto_reset``): a drop-in for ``DALIGenericIterator``
        loops (:class:`~etpp_dali.loader.dali_iterator.DALIStyleIterator`)."""
        return DALIStyleIterator(self, output_map, **options)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration yield epoch ``epoch`` from its start; right after
        :meth:`load_state_dict`, the restored epoch continues where the state left it."""
        if not 0 <= epoch < self.curriculum.total_epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's 0..{self.curriculum.total_epochs - 1}")
        if not (self._resumed and epoch == self.epoch):
            self.epoch, self.step = epoch, 0
        self._resumed = False

    # --------------------------------------------------------------------------- batches
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._resumed = False
        epoch = self.epoch
        stage = self.curriculum.stage_at(epoch)
        runner = self._start(epoch)
        replay = self._replay_buffer(stage)
        gen = torch.Generator().manual_seed(hash((self.seed, epoch, self.shard_id)) % 2**63)
        while self.epoch == epoch and self.step < self.batches_in_epoch(epoch):
            t0 = time.perf_counter()
            out = runner.run()
            produced = runner.feed.take()
            tag = tuple(out["tag"][0].tolist())
            if tag != (epoch, self.step) or produced != (epoch, self.step):
                raise RuntimeError(f"loader out of step: got batch {tag} for ({epoch}, {self.step})")
            x, y = out["images"], out["labels"].to(self.device, non_blocking=True)
            wait = time.perf_counter() - t0
            self.wait_seconds += wait
            self.batch_meta = {"epoch": epoch, "step": self.step, "band": x.shape[-1], "magnitude": stage.magnitude,
                               "stage": stage.index, "fresh": self._fresh_count(epoch, len(y)),
                               "echo": self.echo_factor(epoch)}
            if replay is not None:
                x, y = replay.complete(x, y, self.batch_for_epoch(epoch), gen)
            if self.erasing is not None:  # after the crop, at the band; replayed samples keep their erasing
                self.erasing(x, np.random.default_rng([self.seed, epoch, self.step, self.shard_id, _ERASING_STREAM]))
            self.step += 1
            handed_out = time.perf_counter()
            yield self.settings.format_images(x), y
            if self.auto_echo is not None:  # the caller's time away: from the batch handed out to the next call
                self.auto_echo.record(epoch, self.step - 1, wait, time.perf_counter() - handed_out)

    def _start(self, epoch: int) -> PipelineRunner:
        """The runner of ``epoch``'s graph, started at (epoch, step) unless it is there already."""
        echoes = self.echoes(epoch)
        runner, other = (self._echo_runner, self._runner) if echoes else (self._runner, self._echo_runner)
        other.close()
        if runner.feed is None or runner.feed.next_batch() != (epoch, self.step):  # a start, or the run jumped
            position = (epoch, self.step)
            runner.start(EchoFeed(self.plan, position, self._layouts, self.echo_schedule.echoes, self._decoder)
                         if echoes else Feed(self.plan, position, self.settings.feed_workers(self.cfg.read_files)))
        return runner

    def _fresh_count(self, epoch: int, produced: int) -> int:
        """Samples of the batch just made whose image was decoded for it."""
        if not self.echoes(epoch):
            return produced
        layout = self.echo_layout(epoch)
        return int(np.sum(layout.first_step[layout.uses[self.step]] == self.step))

    def _replay_buffer(self, stage: Any) -> ReplayBuffer | None:
        """The stage's replay buffer with ``echo="tensor"`` (a new, empty one at a stage's start); None
        without replay."""
        if self.echo_setting.mode != "tensor" or stage.replay == 1:
            return None
        if self._buffer_stage != stage.index:
            capacity = self.settings.replay_buffer or stage.buffer or 8 * (stage.batch or self.batch_size)
            self._buffer, self._buffer_stage = ReplayBuffer(capacity), stage.index
        return self._buffer

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: restore with :meth:`load_state_dict` to continue there."""
        return {"version": _STATE_VERSION, "epoch": self.epoch, "step": self.step, "seed": self.seed,
                "schedule": self.curriculum.fingerprint(), "batch_size": self.batch_size,
                "shard_id": self.shard_id, "num_shards": self.num_shards, "dataset_size": len(self.source),
                "excluded": sorted(self.excluded), "echo": self.echo_setting.describe(),
                "echo_held": self._held().tolist(),
                "echo_choices": self.auto_echo.state() if self.auto_echo is not None else []}

    def _held(self) -> np.ndarray:
        """Source indices of the decoded images the echo buffer holds at (epoch, step); a resumed run
        decodes them again as its first batches use them."""
        if self.epoch >= self.curriculum.total_epochs or self.step == 0 or not self.echoes(self.epoch):
            return np.zeros(0, dtype=np.int64)
        return self.echo_layout(self.epoch).held_before(self.step)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` (:meth:`state_dict`) stood; it must come from this schedule, data
        and settings."""
        _check_resumable(state, self.curriculum.fingerprint(), {
            "seed": self.seed, "batch_size": self.batch_size, "num_shards": self.num_shards,
            "dataset_size": len(self.source), "echo": self.echo_setting.describe()})
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.plan.excluded.clear()
        self.plan.excluded.update({int(i): "failed to decode earlier in this run" for i in state.get("excluded", [])})
        if self.auto_echo is not None:  # the factors chosen so far: the same batches as the run never stopped
            self.auto_echo.load(state.get("echo_choices", []))
        if self.step >= self.batches_in_epoch(self.epoch) and self.epoch + 1 < self.curriculum.total_epochs:
            self.epoch, self.step = self.epoch + 1, 0
        self._resumed = True

    def close(self) -> None:
        """Release the pipelines (their threads and buffers); the next iteration builds new ones."""
        self._runner.close()
        self._echo_runner.close()
        self._decoder.close()

    @property
    def rebuilds(self) -> int:
        """How many times a training pipeline was built."""
        return self._runner.builds + self._echo_runner.builds
