"""The loaders the loader benchmark times: this project's loader and the peers a user would pick
instead, each set up the way its own users run it.

Each is built by name in a process of its own (see :mod:`etpp_dali.bench.window`) from the same
sample of files, batch size, threads (or worker processes) and magnitude:

- ``ours``: :class:`~etpp_dali.loader.loaders.CurriculumLoader` at one stage (band, magnitude), exact
  Fourier crop; ``ours_resize``: the same with the resize approximation; ``ours_no_augment``:
  the same without RandAugment.
- ``ours_echo1``, ``ours_echo2``, ``ours_echo4``: ``ours`` at echo factor 1, 2, 4 (each decoded
  image augmented r times, :mod:`etpp_dali.loader.echo.schedule`); ``ours_tensor4``: replay of
  identical augmented samples at r = 4.
- ``reference``: the EfficientTrain++ reference loader (:mod:`etpp_dali.bench.reference`): timm's
  transform at the full resolution, a Lanczos resize to the band, a torch ``DataLoader``.
- ``timm``: ``timm.data.create_loader`` at the band with ``rand-m{m}-mstd0.5-inc1``.
- ``dali``: a plain DALI pipeline in DALI's idiom (``readers.file``, ``decoders.image_random_crop``,
  ``resize``, ``auto_aug.rand_augment`` at bin 3m of 31, ``crop_mirror_normalize``), read
  through ``DALIGenericIterator``.
- ``decode``: DALI's reader and decoder alone (the bound for every DALI pipeline).
- ``stage_*``: our training graph cut after a stage (decode, resize, warp, colour, crop: the
  graph's own ``stop_after``), run without the hand-off to torch: the per-stage breakdown
  (``ours`` is the whole loader).

On ``cuda`` every DALI loader decodes with the ``mixed`` decoder; the reference and timm
loaders decode on the CPU, as their users run them, and their batches are copied to the GPU.

This module is the catalogue (names, labels, the window's spec, the sample list) and imports
neither torch nor DALI, so the benchmark's parent process and the command line stay light. A
window runs as the module that builds its loader (:func:`window_module`): DALI's loaders and ours
in :mod:`etpp_dali.bench.dali_window`, the torch ``DataLoader`` peers in
:mod:`etpp_dali.bench.torch_window`, so each window imports its own loader's libraries only and
its memory figure is its loader's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from etpp_dali.util.files import write_text_atomic

__all__ = ["LOADERS", "BREAKDOWN", "DEFAULT_LOADERS", "PEERS", "TORCH_LOADERS", "LoaderKind", "Running",
           "WindowSpec", "window_module", "write_sample"]


@dataclass(frozen=True)
class LoaderKind:
    """A loader the benchmark knows: its table label and whether it depends on the band."""

    name: str
    label: str
    per_band: bool


LOADERS = {k.name: k for k in (
    LoaderKind("ours", "ours (exact crop)", True),
    LoaderKind("ours_resize", "ours (resize approx.)", True),
    LoaderKind("ours_no_augment", "ours, no RandAugment", True),
    LoaderKind("ours_echo1", "ours, echo r = 1", True),
    LoaderKind("ours_echo2", "ours, echo r = 2 (decode once, augment 2x)", True),
    LoaderKind("ours_echo4", "ours, echo r = 4 (decode once, augment 4x)", True),
    LoaderKind("ours_tensor4", "ours, tensor replay r = 4", True),
    LoaderKind("reference", "ET++ reference", True),
    LoaderKind("timm", "timm create_loader", True),
    LoaderKind("dali", "plain DALI + rand_augment", True),
    LoaderKind("decode", "DALI decode alone", False),
    LoaderKind("stage_decode", "decode the crop window", False),
    LoaderKind("stage_resize", "+ resize to R", False),
    LoaderKind("stage_warp", "+ flip, geometric ops", False),
    LoaderKind("stage_colour", "+ colour ops", False),
    LoaderKind("stage_crop", "+ Fourier crop, normalise", True),
)}
DEFAULT_LOADERS = ("ours", "ours_resize", "ours_no_augment", "reference", "timm", "dali", "decode")
PEERS = ("reference", "timm", "dali", "decode", "ours_resize", "ours_no_augment")  # what ours is set against
# the graph cut after each of its stages (``stage_<name>``: loader.graphs.TRAIN_STAGES), then the whole loader
BREAKDOWN = ("stage_decode", "stage_resize", "stage_warp", "stage_colour", "stage_crop", "ours")
TORCH_LOADERS = ("reference", "timm")  # torch DataLoaders, built by torch_window; the others by dali_window


def window_module(loader: str) -> str:
    """The module a window of ``loader`` runs as (``python -m MODULE SPEC RESULT``)."""
    if loader not in LOADERS:
        raise ValueError(f"loader {loader!r} is unknown; use one of {', '.join(LOADERS)}")
    return "etpp_dali.bench.torch_window" if loader in TORCH_LOADERS else "etpp_dali.bench.dali_window"


@dataclass
class WindowSpec:
    """One timed window: which loader, at which band, with what settings (JSON-serialisable)."""

    loader: str
    band: int | None
    round: int
    sample: str              # the sample list written by :func:`write_sample`
    batch: int
    threads: int
    magnitude: float
    resolution: int
    device: str              # "cpu" or "cuda"
    warmup: int              # batches beyond the loader's prefetch depth
    min_batches: int
    min_seconds: float
    seed: int = 0

    def as_record(self) -> dict[str, Any]:
        """The settings for the results (the run's temporary sample path left out)."""
        return {k: v for k, v in asdict(self).items() if k != "sample"}


@dataclass(kw_only=True)
class Running:
    """A built loader: ``next_batch()`` makes one batch and returns its image count."""

    next_batch: Callable[[], int]
    prefetch: int            # batches it may hold ready before anyone asks (drained by the warm-up)
    close: Callable[[], None]
    decoder: str             # where JPEGs are decoded: "cpu", "mixed" or "PIL"
    output_device: str
    sync: Callable[[], None] | None = None


def write_sample(path: str | Path, source: Any, indices: Any) -> Path:
    """Write the files the windows read (paths, labels, sizes): built once per run, so no window
    scans the data set (:func:`etpp_dali.bench.window.load_sample` reads it back)."""
    records = [list(_record_fields(source.records[int(i)])) for i in indices]
    return write_text_atomic(path, json.dumps({"name": source.name, "classes": source.classes,
                                               "records": records}))


def _record_fields(r: Any) -> tuple:
    return r.path, r.label, r.width, r.height, r.format
