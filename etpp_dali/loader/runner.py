"""Running a loader's DALI pipeline: build it when needed, run it, hand out its outputs by name as
torch tensors, and go on when the decoder fails on a file.

A file can pass the up-front check (header, end-of-file marker, PNG checksums) and still make
the decoder fail. DALI then fails the whole run and names the sample's place in its batch
("Failed to decode sample #k"). The runner asks its feed which source images sat at that place in
the batches in flight, decodes those with PIL to find the culprit (else takes the first),
reports it once, has the feed's plan leave it out, and rebuilds the pipeline at the first batch
the loader has not taken. Where the graph reads its files, a file gone or unreadable since the
scan fails the run too; DALI names it, and it is left out the same way.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Sequence

import torch
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

from etpp_dali.data.scan import DataError, inspect_image
from etpp_dali.data.sources import Source
from etpp_dali.loader.plans import Feed

__all__ = ["PipelineRunner", "to_torch"]

_FAILED_SAMPLE = re.compile(r"Failed to decode sample #(\d+)")
_FAILED_FILE = re.compile(r"Could not open file (.+?)\s*$", re.MULTILINE)  # fn.io.file.read's message


def to_torch(batch: Any, zero_copy: bool) -> torch.Tensor:
    """A dense DALI batch (``TensorList``) as one torch tensor on the batch's own device, by DALI's
    own conversion: shared through DLPack where the executor lets outputs outlive the next run
    (``zero_copy``, the dynamic executor, as DALI's iterators do), else copied."""
    dense = batch.as_tensor()
    if isinstance(dense, TensorGPU):
        with torch.cuda.device(dense.device_id()):  # DLPack syncs on this device's current stream
            return to_torch_tensor(dense, copy=not zero_copy)
    return to_torch_tensor(dense, copy=not zero_copy)


def failed_sample(exc: BaseException) -> int | None:
    """The place in its batch of the sample DALI's decoder gave up on, if that is the error."""
    match = _FAILED_SAMPLE.search(str(exc))
    return int(match.group(1)) if match else None


def failed_file(exc: BaseException) -> str | None:
    """The path of the file the graph could not open (a graph that reads its files), if that is the error."""
    match = _FAILED_FILE.search(str(exc))
    return match.group(1) if match else None


def pick_culprit(source: Source, candidates: Sequence[int]) -> tuple[int, str]:
    """Among source indices that DALI may have failed on, the one PIL cannot decode either
    (else the first), with the reason to report."""
    for i in candidates:
        try:
            inspect_image(bytes(source.read(i)), deep=True)
        except DataError as exc:
            return i, str(exc)
    return candidates[0], "the decoder failed on it"


class PipelineRunner:
    """One loader's pipeline over a :class:`~etpp_dali.loader.plans.Feed`: defined by ``define(feed)``
    and built on the first :meth:`run` after :meth:`start`, outputs returned as ``{name: tensor}``.

    On a decode failure, the feed names the source images at the failed place of the batches in
    flight; the culprit is reported once, the feed's plan leaves it out, and a new pipeline
    starts at the first batch the loader has not taken. Any other pipeline error is raised.
    Holds no reference to its loader, so a dropped loader frees its pipeline at once (never later,
    from the garbage collector, wherever the program then is).
    """

    def __init__(self, names: Sequence[str], define: Callable[[Feed], Any]) -> None:
        self.names = tuple(names)
        self._define = define
        self._pipe: Any = None
        self.feed: Feed | None = None
        self.builds = 0

    def start(self, feed: Feed) -> None:
        """Drop the current pipeline; the next :meth:`run` builds one that pulls from ``feed``."""
        self.close()
        self.feed = feed

    def run(self) -> dict[str, torch.Tensor]:
        """The next batch's outputs by name; ``StopIteration`` at the end of the feed's data."""
        while True:
            if self._pipe is None:
                self._pipe = self._define(self.feed)
                self._pipe.build()
                self.builds += 1
            try:
                outputs = self._pipe.run()
            except RuntimeError as exc:
                self._recover(exc)
                continue
            zero_copy = self._pipe.exec_dynamic
            return {name: to_torch(out, zero_copy) for name, out in zip(self.names, outputs)}

    def _recover(self, exc: RuntimeError) -> None:
        source = self.feed.plan.source
        k, path = failed_sample(exc), failed_file(exc)
        if path is not None:  # the graph reads its files: one of those in flight is gone or unreadable
            candidates = [i for i in self.feed.in_flight() if source.path(i) == path]
            bad, reason = (candidates[0], "could not be opened (deleted or unreadable since the scan)") \
                if candidates else (None, "")
        else:
            candidates = self.feed.in_flight(k) if k is not None else []
            bad, reason = pick_culprit(source, candidates) if candidates else (None, "")
        if bad is None:
            raise exc
        print(f"etpp: left out {source.records[bad].path}: {reason} (run `etpp check-data --deep`)",
              file=sys.stderr)
        self.feed.plan.leave_out(bad, reason)
        self.start(self.feed.restart())

    def close(self) -> None:
        """Release the pipeline (its threads and buffers) and its feed (and the feed's threads)."""
        self._pipe = None
        if self.feed is not None:
            self.feed.close()
        self.feed = None
