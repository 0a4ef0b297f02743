"""Running a loader's DALI pipeline: build it when needed, run it, hand out its outputs by name as
torch tensors, and go on when the decoder fails on a file.

A file can pass the up-front check (header, end-of-file marker, PNG checksums) and still make
the decoder fail. DALI then fails the whole run and names the sample's place in its batch
("Failed to decode sample #k"). The runner asks its owner which source images sat at that place
in the batches in flight, decodes those with PIL to find the culprit (else takes the first),
reports it once, lets the owner leave it out, and rebuilds the pipeline at the owner's position.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Sequence

import torch

from .data import DataError, inspect_image
from .sources import Source

__all__ = ["PipelineRunner", "to_torch"]

_FAILED_SAMPLE = re.compile(r"Failed to decode sample #(\d+)")


def to_torch(batch: Any, zero_copy: bool) -> torch.Tensor:
    """A dense DALI batch (``TensorList``) as one torch tensor on the batch's own device, by DALI's
    own conversion: shared through DLPack where the executor lets outputs outlive the next run
    (``zero_copy``, the dynamic executor, as DALI's iterators do), else copied."""
    from nvidia.dali.backend import TensorGPU
    from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

    dense = batch.as_tensor()
    if isinstance(dense, TensorGPU):
        with torch.cuda.device(dense.device_id()):  # DLPack syncs on this device's current stream
            return to_torch_tensor(dense, copy=not zero_copy)
    return to_torch_tensor(dense, copy=not zero_copy)


def failed_sample(exc: BaseException) -> int | None:
    """The place in its batch of the sample DALI's decoder gave up on, if that is the error."""
    match = _FAILED_SAMPLE.search(str(exc))
    return int(match.group(1)) if match else None


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
    """One loader's pipeline: defined by ``define()`` and built on the first :meth:`run` after
    :meth:`close` (so the owner rebuilds it by closing it), outputs returned as ``{name: tensor}``.

    On a decode failure at place k, ``suspects(k)`` gives the source indices at place k of the
    batches in flight; the culprit is reported, ``leave_out(index, reason)`` tells the owner, and
    the pipeline is rebuilt where the owner now stands. Any other pipeline error is raised.
    """

    def __init__(self, source: Source, names: Sequence[str], define: Callable[[], Any],
                 suspects: Callable[[int], list[int]], leave_out: Callable[[int, str], None]) -> None:
        self.source = source
        self.names = tuple(names)
        self._define, self._suspects, self._leave_out = define, suspects, leave_out
        self._pipe: Any = None
        self._ended = False  # the last run met the end of the data: reset() can start it again
        self.builds = 0

    @property
    def built(self) -> bool:
        return self._pipe is not None

    def run(self) -> dict[str, torch.Tensor]:
        """The next batch's outputs by name; ``StopIteration`` at the end of the data."""
        while True:
            if self._pipe is None:
                self._pipe = self._define()
                self._pipe.build()
                self.builds += 1
            try:
                outputs = self._pipe.run()
            except StopIteration:
                self._ended = True
                raise
            except RuntimeError as exc:
                self._recover(exc)
                continue
            zero_copy = self._pipe.exec_dynamic
            return {name: to_torch(out, zero_copy) for name, out in zip(self.names, outputs)}

    def _recover(self, exc: RuntimeError) -> None:
        k = failed_sample(exc)
        candidates = self._suspects(k) if k is not None else []
        if not candidates:
            raise exc
        bad, reason = pick_culprit(self.source, candidates)
        print(f"etpp: left out {self.source.records[bad].path}: {reason} (run `etpp check-data --deep`)",
              file=sys.stderr)
        self.close()
        self._leave_out(bad, reason)

    def finish(self) -> None:
        """Run to the end of the data (all batches consumed), so :meth:`rewind` can reset."""
        try:
            self.run()
        except StopIteration:
            return
        raise RuntimeError("the pipeline has more batches than its owner planned")

    def rewind(self) -> None:
        """Start the data again: a reset of a pipeline that met its end, else a rebuild."""
        if self._pipe is not None and self._ended:
            self._pipe.reset()
        else:
            self.close()
        self._ended = False

    def close(self) -> None:
        """Release the pipeline (its threads and buffers); the next :meth:`run` builds a new one."""
        self._pipe = None
        self._ended = False
