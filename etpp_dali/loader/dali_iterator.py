"""DALI's PyTorch iterator protocol on top of :class:`~etpp_dali.loader.loaders.CurriculumLoader`.

A training loop written for ``DALIClassificationIterator`` / ``DALIGenericIterator`` (DALI's
ResNet-50 example and the like) runs unchanged with the curriculum, but for its constructor and
one ``set_epoch`` call::

    train_loader = DALIStyleIterator(CurriculumLoader("data", cur, batch_size=256))
    for epoch in range(cur.total_epochs):
        train_loader.set_epoch(epoch)                       # the one added line
        for i, data in enumerate(train_loader):
            images = data[0]["data"]                        # N x 3 x B x B, B from the schedule
            target = data[0]["label"].squeeze(-1).long()    # labels are N x 1, as DALI's readers give
            ...
        train_loader.reset()

What carries over from DALI: a list with one dict per pipeline (here always one), keyed by
``output_map``; ``StopIteration`` at the end of the epoch, then ``reset()`` (or ``auto_reset``;
``iter()`` on an ended epoch resets it too); ``size`` (and ``_size``, which DALI's example
reads), ``len()``, ``batch_size``; ``last_batch_policy`` as DALI's ``LastBatchPolicy`` or its
name. The loader always gives full batches: each rank completes its last batch from the start
of its own part of the epoch, which is ``FILL``. ``DROP`` leaves that last batch out when it is
not whole; ``PARTIAL`` hands it out without the repeated samples. ``reset()`` moves to the next
epoch of the schedule; ``set_epoch`` jumps to any epoch. Sizes follow the current epoch (a stage
with replay has more, smaller fresh batches).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, NoReturn, Protocol, Sequence

import torch

__all__ = ["DALIStyleIterator", "EpochLoader", "LAST_BATCH_POLICIES"]

LAST_BATCH_POLICIES = ("FILL", "DROP", "PARTIAL")


class EpochLoader(Protocol):
    """What the iterator reads of its loader (a :class:`~etpp_dali.loader.loaders.CurriculumLoader`);
    the loader module imports this one, never the reverse."""

    curriculum: Any
    epoch: int
    step: int
    shard_len: int
    batch_meta: dict[str, Any]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def batch_for_epoch(self, epoch: int | None = None) -> int: ...
    def batches_in_epoch(self, epoch: int | None = None) -> int: ...
    def fresh_batch_size(self, epoch: int | None = None) -> int: ...
    def echoes(self, epoch: int) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _policy_name(policy: Any) -> str:
    """DALI's ``LastBatchPolicy.X`` (read by name, so DALI's plugin is not imported) or ``"x"``."""
    name = getattr(policy, "name", policy)
    if not isinstance(name, str) or name.upper() not in LAST_BATCH_POLICIES:
        raise ValueError(f"last_batch_policy = {policy!r} is unknown; use LastBatchPolicy.FILL, DROP or PARTIAL")
    return name.upper()


def _auto_reset(value: Any) -> bool:
    if value in (False, None, "no"):
        return False
    if value in (True, "yes"):
        return True
    raise ValueError(f"auto_reset = {value!r} is unknown; use True/'yes' or False/'no', as DALI does")


class DALIStyleIterator:
    """A :class:`~etpp_dali.loader.loaders.CurriculumLoader` seen through DALI's ``DALIGenericIterator``
    protocol."""

    def __init__(self, loader: EpochLoader, output_map: Sequence[str] = ("data", "label"), *,
                 auto_reset: bool | str | None = False, last_batch_policy: Any = "FILL") -> None:
        output_map = list(output_map)
        if len(output_map) != 2 or len(set(output_map)) != 2 or not all(isinstance(n, str) for n in output_map):
            raise ValueError(f"output_map = {output_map!r}: give two distinct names, for the images and the "
                             "labels (e.g. ['data', 'label'])")
        self.loader = loader
        self.output_map = output_map
        self.last_batch_policy = _policy_name(last_batch_policy)
        self.auto_reset = _auto_reset(auto_reset)
        self._batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._counter = 0        # batches handed out in this epoch
        self._ended = False      # this epoch raised StopIteration; reset() moves on
        self._finished = False   # the schedule's last epoch has ended

    # ----------------------------------------------------------------------- epochs
    @property
    def batch_size(self) -> int:
        """The current epoch's batch: a stage may set its own (per-stage batch with accumulation)."""
        return self.loader.batch_for_epoch()

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` of the schedule next (from its start, or where a restored state left it)."""
        self._close_batches()
        self.loader.set_epoch(epoch)
        self._counter, self._ended, self._finished = self.loader.step, False, False

    def reset(self) -> None:
        """After the end of an epoch: move to the next one. Before it, ignored with a warning, as DALI does."""
        if not self._ended:
            if self._counter:
                warnings.warn("DALIStyleIterator.reset() before the end of the epoch is ignored (as DALI's "
                              "iterators do); call set_epoch() to jump", stacklevel=2)
            return
        self._ended, self._counter = False, 0
        following = self.loader.epoch + 1
        if following < self.loader.curriculum.total_epochs:
            self.loader.set_epoch(following)
        else:
            self._finished = True

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._close_batches()
        self.loader.load_state_dict(state)
        self._counter, self._ended, self._finished = self.loader.step, False, False

    # ------------------------------------------------------------------------ sizes
    def _padding(self) -> int:
        """Samples repeated from the start of this rank's part to complete the epoch's last batch.
        An epoch that echoes before augmentation has none: each of its samples is a use of its own
        (every decoded image serves r of them), so every policy gives the same full batches."""
        if self.loader.echoes(self.loader.epoch):
            return 0
        return -self.loader.shard_len % self.loader.fresh_batch_size()

    def __len__(self) -> int:
        n = self.loader.batches_in_epoch()
        return n - 1 if self.last_batch_policy == "DROP" and self._padding() else n

    @property
    def size(self) -> int:
        """Samples this rank gets in the current epoch (``ceil(size / batch_size) == len(self)``)."""
        if self.last_batch_policy == "PARTIAL":
            return self.loader.batches_in_epoch() * self.batch_size - self._padding()
        return len(self) * self.batch_size

    @property
    def _size(self) -> int:  # DALI's examples read the private name
        return self.size

    # ---------------------------------------------------------------------- batches
    def __iter__(self) -> "DALIStyleIterator":
        if self._ended:  # a used iterator starts the next epoch (DALI's would also warn mid-epoch)
            self.reset()
        return self

    def next(self) -> list[dict[str, torch.Tensor]]:
        return self.__next__()

    def __next__(self) -> list[dict[str, torch.Tensor]]:
        if self._finished or self._ended:
            raise StopIteration
        if len(self) == 0:
            raise RuntimeError(f"last_batch_policy DROP: this rank's {self.loader.shard_len} images fill no batch "
                               f"of {self.loader.fresh_batch_size()}; use FILL or PARTIAL, or a smaller batch")
        if self._counter >= len(self):
            self._end_epoch()
        if self._batches is None:
            self._batches = iter(self.loader)
        try:
            images, labels = next(self._batches)
        except StopIteration:
            self._end_epoch()
        self._counter += 1
        if self.last_batch_policy == "PARTIAL" and self._counter == len(self) and self._padding():
            images, labels = self._without_padding(images, labels)
        return [{self.output_map[0]: images, self.output_map[1]: labels.unsqueeze(1)}]

    def _without_padding(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last batch without its repeated samples: they close the fresh part, replayed samples follow."""
        fresh = self.loader.batch_meta["fresh"]
        keep = torch.cat([torch.arange(fresh - self._padding()), torch.arange(fresh, len(labels))]).to(labels.device)
        return images[keep], labels[keep]

    def _end_epoch(self) -> NoReturn:
        # DROP: the batch left out is still taken from the pipeline, so the next epoch starts in step
        self._close_batches(drain=True)
        self._ended = True
        if self.auto_reset:
            self.reset()
        raise StopIteration

    def _close_batches(self, drain: bool = False) -> None:
        if self._batches is not None:
            if drain:
                for _ in self._batches:
                    pass
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()
        self._batches = None
