"""``echo="auto"``: the echo factor of each epoch, chosen from what the epoch before it measured.

Steps per epoch never depend on the echo factor r (:mod:`etpp_dali.loader.echo.schedule`), so r can change at
any epoch boundary without touching the curriculum. A run of epochs whose stages share band,
batch and replay factor starts at the schedule's factor r0 (capped at ``echo_max``). During
every epoch the loader measures, per step, the caller's wait (inside ``next()``, until the
batch is in hand) and its time away (from a batch handed out to the next ``next()``), after
two warm-up steps; an echoing epoch also times the decoding of its fresh images. When the
loader prepares the next epoch of the same run, :func:`choose_echo` picks the smallest r, from
the current one up to ``echo_max``, whose predicted wait is under 5% of the step: r never goes
down within a run, and an epoch where the caller waited less keeps its r. Each choice that
changes r, and the first of each stage, is logged (stderr, ``verbose``); :attr:`choices` and
the loader's state hold them, so a resumed run makes the same batches as one never stopped.
A run resumed in the middle of an epoch whose successor is not chosen yet measures the rest
of that epoch and chooses from it.

The prediction, from per-step means at factor r (wait W, away A, decode time D of the step's
b / r fresh images) for factor r' (which decodes b / r' of them):

- an echoing epoch decodes in the caller's thread when it asks for a batch, so the decode time
  lies inside the wait and shrinks with 1/r': ``W' = max(0, W - D (1 - r / r'))``;
- the single graph (r = 1) decodes and augments in one pipeline, so D is not measured apart:
  the whole loader time per step, ``L = W + A`` when the caller waits, is taken to scale with
  the fresh images, ``W' = max(0, L r / r' - A)``. The augment work of every use stays, so this
  errs low; the next epoch measures again and raises r when the caller still waits.

The predicted wait fraction is ``W' / (W' + A)``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["AutoEcho", "choose_echo", "predicted_wait", "WAIT_TARGET"]

WAIT_TARGET = 0.05  # the largest share of a step the caller may spend waiting for data
_WARMUP_STEPS = 2  # first steps of an epoch, not measured: pipeline start, first batch of new shapes


def predicted_wait(wait: float, away: float, factor: int, new_factor: int, decode: float | None = None) -> float:
    """The share of a step the caller would wait at ``new_factor``, from per-step means measured
    at ``factor`` (``decode``: the decode time of the step's fresh images, when measured apart;
    see the module docstring)."""
    if decode is None:
        new_wait = max(0.0, (wait + away) * factor / new_factor - away)
    else:
        new_wait = max(0.0, wait - min(decode, wait) * (1 - factor / new_factor))
    return new_wait / max(new_wait + away, 1e-12)


def choose_echo(wait: float, away: float, factor: int, echo_max: int, decode: float | None = None,
                target: float = WAIT_TARGET) -> int:
    """The smallest r in ``factor..echo_max`` whose predicted wait share is under ``target``
    (``echo_max`` when none is); ``factor`` itself when the measured wait already is."""
    for r in range(factor, max(factor, echo_max) + 1):
        if predicted_wait(wait, away, factor, r, decode) < target:
            return r
    return max(factor, echo_max)


@dataclass
class _Meter:
    """Per-step sums of one epoch, and the decoder's totals when its measurement began."""

    decode_start: tuple[float, int]
    wait: float = 0.0
    away: float = 0.0
    steps: int = 0


class AutoEcho:
    """The echo factor of every epoch under ``echo="auto"`` (see the module docstring).

    ``steps``: the rank's :class:`~etpp_dali.loader.plans.EpochSteps` (schedule, batch and steps of
    each epoch); ``decoded()``: the decoder's (seconds, images) so far."""

    def __init__(self, steps: Any, echo_max: int, decoded: Callable[[], tuple[float, int]],
                 verbose: bool = True) -> None:
        self.steps, self.echo_max = steps, echo_max
        self.decoded, self.verbose = decoded, verbose
        self.choices: dict[int, int] = {}  # epoch -> its echo factor, once chosen
        self._meters: dict[int, _Meter] = {}

    @property
    def stage_choices(self) -> dict[int, int]:
        """Stage index -> the echo factor of its latest chosen epoch."""
        return {self.steps.curriculum.stage_at(e).index: r for e, r in sorted(self.choices.items())}

    def factor(self, epoch: int, choose: bool = True) -> int:
        """The echo factor of ``epoch``; ``choose=False`` looks without making a choice final
        (an epoch not chosen yet then reads as its predecessor's factor)."""
        if epoch in self.choices:
            return self.choices[epoch]
        first = epoch  # the first epoch not chosen yet of the run of epochs ``epoch`` belongs to
        while first > 0 and first - 1 not in self.choices and self._kind(first - 1) == self._kind(epoch):
            first -= 1
        if first > 0 and first - 1 in self.choices and self._kind(first - 1) == self._kind(epoch):
            r = self.choices[first - 1]
        else:  # the run starts at ``first``, at the schedule's factor
            r = min(self.steps.curriculum.stage_at(first).replay, self.echo_max)
            if not choose:
                return r
            self.choices[first] = r
            first += 1
        for e in range(first, epoch + 1) if choose else ():
            r = self.choices[e] = self._choose(e, r)
        return r

    def record(self, epoch: int, step: int, wait: float, away: float) -> None:
        """One step's wait and time away (seconds), measured by the loader."""
        if step < min(_WARMUP_STEPS, self.steps.batches_in_epoch(epoch) // 2) or epoch + 1 in self.choices:
            return  # a warm-up step, or the next epoch's factor is chosen already
        meter = self._meters.setdefault(epoch, _Meter(self.decoded()))
        meter.wait, meter.away, meter.steps = meter.wait + wait, meter.away + away, meter.steps + 1

    def state(self) -> list[list[int]]:
        return [[e, r] for e, r in sorted(self.choices.items())]

    def load(self, pairs: list[list[int]]) -> None:
        self.choices = {int(e): int(r) for e, r in pairs}
        self._meters.clear()

    def _kind(self, epoch: int) -> tuple[int, int, int]:
        stage = self.steps.curriculum.stage_at(epoch)
        return stage.band, self.steps.batch_for_epoch(epoch), stage.replay

    def _choose(self, epoch: int, previous: int) -> int:
        """The factor of ``epoch`` from its predecessor's measurement (at ``previous``)."""
        meter = self._meters.pop(epoch - 1, None)
        if meter is None or not meter.steps:
            return previous
        wait, away = meter.wait / meter.steps, meter.away / meter.steps
        seconds, images = (now - then for now, then in zip(self.decoded(), meter.decode_start))
        decode = None  # the decode time of a step's fresh images, measured apart in an echoing epoch only
        if previous > 1 and images:
            decode = seconds / images * self.steps.batch_for_epoch(epoch - 1) / previous
        r = choose_echo(wait, away, previous, self.echo_max, decode)
        stage = self.steps.curriculum.stage_at(epoch)
        if self.verbose and (r != previous or epoch == stage.start_epoch):
            print(f"etpp: stage {stage.index} (band {stage.band}): echo auto -> r = {r} from epoch {epoch} "
                  f"(caller waited {wait / max(wait + away, 1e-12):.0%} at r = {previous})", file=sys.stderr)
        return r
