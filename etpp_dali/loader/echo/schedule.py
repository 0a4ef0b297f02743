"""Echo before augmentation: each decoded image serves r training samples, each with its own draws.

A stage with echo factor r keeps the steps the schedule gives it (its data epochs were already
divided by the schedule's replay factor, so an epoch of the loader has r times the steps of a pass
over the rank's images), whatever r the loader runs at: an epoch of T steps of b samples takes
``ceil(T b / r)`` fresh images (the epoch's pass, then further passes when r is below the
schedule's replay) and uses each r times. So steps and compute never depend on r, and
``len(loader)`` is the schedule's; only the share of decoded images changes.

Which use lands where (:func:`echo_uses`): copy c of fresh image i gets the key ``i + c D``; the
uses are taken in key order and cut into batches. Any D consecutive keys hold at least D uses,
so with ``D >= b`` the copies of one image always fall in different batches, about ``c D / r``
uses apart: D is the shuffle window. The loader holds an image from its first use to its last:
about ``(r - 1) D + b`` decoded images, so D is the largest multiple of b, up to 4 b, whose
buffer fits ``echo_buffer_mb``; when even ``D = b`` does not fit, r is lowered to what fits.

Every use draws its own crop window, flip, RandAugment ops and band from the batch's generator
(seed, epoch, step, rank), exactly as a fresh image would: an echoed sample differs from the
first use as much as two epochs of the same image do. All of it follows from (epoch, step), so
the buffer of a resumed run is rebuilt by decoding again the images it held, and the batches
are those of an uninterrupted run.

Decoded images are stored whole, at the decoder's size: the crop window is drawn on the full
image (down to 8% of its area) and resized to R from those pixels, so any smaller copy would
change the pixels of small windows; whole images are what the single graph's region decoding
reads too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["EchoSetting", "EchoEpoch", "EchoSchedule", "EchoLayouts", "parse_echo", "echo_factor_value", "echo_uses",
           "echo_window", "decoded_image_bytes", "DEFAULT_ECHO_BUFFER_MB"]

DEFAULT_ECHO_BUFFER_MB = 1024.0
_MODES = ("augment", "tensor", "off", "auto")
_MAX_WINDOW_BATCHES = 4


@dataclass(frozen=True)
class EchoSetting:
    """How a loader echoes: ``mode`` is ``"augment"`` (decode once, augment r times), ``"auto"``
    (the same, r measured per epoch: :mod:`etpp_dali.loader.echo.auto`), ``"tensor"`` (the reference's
    replay of identical augmented samples) or ``"off"``; ``factor`` fixes r for every stage (None:
    the schedule's replay factor; under ``"auto"`` the factor a stage starts at)."""

    mode: str
    factor: int | None
    buffer_mb: float

    @property
    def buffer_bytes(self) -> int:
        return int(self.buffer_mb * 2**20)

    def factor_for(self, replay: int) -> int:
        """The echo factor of a stage whose schedule gives replay factor ``replay``."""
        if self.mode == "off":
            return 1
        return self.factor if self.factor is not None else replay

    def describe(self) -> str:
        return str(self.factor) if self.factor is not None else self.mode


def echo_factor_value(value: Any, name: str) -> int:
    """``value`` as an echo factor (an integer >= 1, or its digits), else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise ValueError(f"{name} = {value!r}: an echo factor must be an integer >= 1")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"{name} = {value!r}: an echo factor must be an integer >= 1")
        value = int(value)
    if value < 1:
        raise ValueError(f"{name} = {value}: an echo factor must be an integer >= 1")
    return int(value)


def parse_echo(echo: str | int, echo_buffer_mb: float) -> EchoSetting:
    """The loader's ``echo`` and ``echo_buffer_mb`` settings, checked (one-line errors naming them)."""
    if not isinstance(echo_buffer_mb, (int, float)) or isinstance(echo_buffer_mb, bool) or echo_buffer_mb <= 0:
        raise ValueError(f"echo_buffer_mb = {echo_buffer_mb!r}: give the decoded-image buffer's size in MB (> 0)")
    if isinstance(echo, str) and echo in _MODES:
        return EchoSetting(echo, None, float(echo_buffer_mb))
    if isinstance(echo, str) and not echo.strip().isdigit():
        raise ValueError(f"echo = {echo!r} is unknown; use augment, auto, tensor, off or an integer factor >= 1")
    factor = echo_factor_value(echo, "echo")
    return EchoSetting("augment" if factor > 1 else "off", factor, float(echo_buffer_mb))


def echo_uses(fresh: int, uses: int, factor: int, window: int) -> np.ndarray:
    """The fresh image (0..fresh-1) of each of ``uses`` uses, in order: copy c of image i at key
    ``i + c * window``, uses in key order (see the module docstring); ``uses <= fresh * factor``."""
    if uses > fresh * factor:
        raise ValueError(f"{uses} uses need more than {fresh} images x {factor}")
    keys = np.arange(fresh)[None, :] + window * np.arange(factor)[:, None]  # (copy, image)
    order = np.argsort(keys.ravel(), kind="stable")  # within a key: copies in order
    return np.broadcast_to(np.arange(fresh), (factor, fresh)).ravel()[order][:uses]


def echo_window(batch: int, factor: int, image_bytes: float, buffer_mb: float) -> tuple[int, int]:
    """(factor, window D) that fit ``buffer_mb`` with images of ``image_bytes`` on average: the
    widest window (a multiple of the batch, up to 4 batches), else a lower factor at D = batch."""
    capacity = int(buffer_mb * 2**20 // max(image_bytes, 1.0))
    if capacity < batch:
        raise ValueError(f"echo_buffer_mb = {buffer_mb:g} holds {capacity} decoded images, less than "
                         f"one batch of {batch}; give at least {math.ceil(batch * image_bytes / 2**20)} MB")
    if factor == 1:
        return 1, batch
    k = min(_MAX_WINDOW_BATCHES, (capacity - batch) // (batch * (factor - 1)))
    if k >= 1:
        return factor, k * batch
    return 1 + (capacity - batch) // batch, batch


class EchoEpoch:
    """The uses of one epoch: at each step, which fresh images (positions in the epoch's fresh
    sequence) make its batch, and which source image each position is."""

    def __init__(self, plan: Any, epoch: int, factor: int, window: int) -> None:
        self.epoch, self.factor = epoch, factor
        steps, batch = plan.batches_in_epoch(epoch), plan.batch_for_epoch(epoch)
        fresh = math.ceil(steps * batch / factor)
        self.sources = plan.fresh_sequence(epoch, fresh)
        self.uses = echo_uses(fresh, steps * batch, factor, window).reshape(steps, batch)
        at_step = np.repeat(np.arange(steps), batch)
        self.first_step = np.full(fresh, steps, dtype=np.int64)
        self.last_step = np.full(fresh, -1, dtype=np.int64)
        np.minimum.at(self.first_step, self.uses.ravel(), at_step)
        np.maximum.at(self.last_step, self.uses.ravel(), at_step)

    def held_before(self, step: int) -> np.ndarray:
        """Source indices of the images the buffer holds when ``step`` starts (used before it and again later)."""
        held = (self.first_step < step) & (self.last_step >= step)
        return self.sources[np.flatnonzero(held)]


class EchoSchedule:
    """Which epochs echo before augmentation, and at which (factor, window). ``steps``: the rank's
    :class:`~etpp_dali.loader.plans.EpochSteps` (schedule and batch of each epoch);
    ``image_bytes``: a decoded image's mean size; ``factor_of(epoch)``: the epoch's echo factor
    (default: the setting's for its stage). It needs no plan, so the plan can take
    :meth:`single_graph` as the epochs it makes itself."""

    def __init__(self, steps: Any, image_bytes: float, setting: EchoSetting,
                 factor_of: Callable[[int], int] | None = None) -> None:
        self.steps, self.setting, self.image_bytes = steps, setting, image_bytes
        self.factor_of = factor_of or self._setting_factor
        for stage in steps.curriculum.stages:  # a buffer too small fails here, before any work
            if setting.mode == "auto" or (setting.mode == "augment" and self._setting_factor(stage.start_epoch) > 1):
                echo_window(steps.batch_for_epoch(stage.start_epoch), 1, image_bytes, setting.buffer_mb)

    def _setting_factor(self, epoch: int) -> int:
        return self.setting.factor_for(self.steps.curriculum.stage_at(epoch).replay)

    def fit(self, epoch: int) -> tuple[int, int]:
        """(factor, window) of echo epoch ``epoch`` within the buffer (:func:`echo_window`)."""
        return echo_window(self.steps.batch_for_epoch(epoch), self.factor_of(epoch), self.image_bytes,
                           self.setting.buffer_mb)

    def echoes(self, epoch: int) -> bool:
        """Whether ``epoch`` runs the decode and augment stages (else the single graph)."""
        return self.setting.mode in ("augment", "auto") and self.factor_of(epoch) > 1

    def single_graph(self, epoch: int) -> bool:
        """Whether the single graph makes ``epoch`` (it does not echo)."""
        return not self.echoes(epoch)


def decoded_image_bytes(sizes: np.ndarray) -> float:
    """The mean size of a decoded RGB image of ``sizes`` (N, 2) = (h, w), in bytes."""
    return float(np.mean(sizes.prod(axis=1))) * 3


class EchoLayouts:
    """The layout of each echo epoch of ``plan`` (:class:`EchoEpoch`), as ``layouts(epoch)``; the one
    in hand is kept."""

    def __init__(self, plan: Any, schedule: EchoSchedule) -> None:
        self.plan, self.schedule = plan, schedule
        self._layouts: dict[int, EchoEpoch] = {}

    def __call__(self, epoch: int) -> EchoEpoch:
        if epoch not in self._layouts:
            factor, window = self.schedule.fit(epoch)
            self._layouts = {epoch: EchoEpoch(self.plan, epoch, factor, window)}
        return self._layouts[epoch]
