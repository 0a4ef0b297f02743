"""The loaders the loader benchmark times: this project's loader and the peers a user would pick
instead, each set up the way its own users run it.

Each is built by name in a process of its own (see :mod:`etpp_dali.bench.window`) from the same
sample of files, batch size, threads (or worker processes) and magnitude:

- ``ours``: :class:`~etpp_dali.loader.loaders.CurriculumLoader` at one stage (band, magnitude), exact
  Fourier crop; ``ours_resize``: the same with the resize approximation; ``ours_no_augment``:
  the same without RandAugment.
- ``ours_echo1``, ``ours_echo2``, ``ours_echo4``: ``ours`` at echo factor 1, 2, 4 (each decoded image
  augmented r times, :mod:`etpp_dali.loader.echo.schedule`); ``ours_tensor4``: replay of identical augmented samples at r = 4.
- ``reference``: the EfficientTrain++ reference loader (:mod:`etpp_dali.bench.reference`): timm's
  transform at the full resolution, a Lanczos resize to the band, a torch ``DataLoader``.
- ``timm``: ``timm.data.create_loader`` at the band with ``rand-m{m}-mstd0.5-inc1``.
- ``dali``: a plain DALI pipeline in DALI's idiom (``readers.file``, ``decoders.image_random_crop``,
  ``resize``, ``auto_aug.rand_augment`` at bin 3m of 31, ``crop_mirror_normalize``), read
  through ``DALIGenericIterator``.
- ``decode``: DALI's reader and decoder alone (the bound for every DALI pipeline).
- ``stage_*``: our training graph cut after a stage (decode, resize, warp, colour, crop), run
  without the hand-off to torch: the per-stage breakdown (``ours`` is the whole loader).

On ``cuda`` every DALI loader decodes with the ``mixed`` decoder; the reference and timm
loaders decode on the CPU, as their users run them, and their batches are copied to the GPU.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["LOADERS", "BREAKDOWN", "DEFAULT_LOADERS", "PEERS", "LoaderKind", "Running", "WindowSpec", "build_loader", "load_sample",
           "write_sample"]


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
BREAKDOWN = ("stage_decode", "stage_resize", "stage_warp", "stage_colour", "stage_crop", "ours")
_STAGE_DEPTH = {name: i for i, name in enumerate(BREAKDOWN[:-1])}


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


@dataclass
class Running:
    """A built loader: ``next_batch()`` makes one batch and returns its image count."""

    next_batch: Callable[[], int]
    prefetch: int            # batches it may hold ready before anyone asks (drained by the warm-up)
    close: Callable[[], None]
    decoder: str             # where JPEGs are decoded: "cpu", "mixed" or "PIL"
    output_device: str
    sync: Callable[[], None] | None = None


# ------------------------------------------------------------------------------ sample
def write_sample(path: str | Path, source: Any, indices: Any) -> Path:
    """Write the files the windows read (paths, labels, sizes): built once per run, so no window
    scans the data set."""
    from etpp_dali.util.files import write_text_atomic

    records = [list(_record_fields(source.records[int(i)])) for i in indices]
    return write_text_atomic(path, json.dumps({"name": source.name, "classes": source.classes,
                                               "records": records}))


def _record_fields(r: Any) -> tuple:
    return r.path, r.label, r.width, r.height, r.format


def load_sample(path: str | Path) -> Any:
    """The :class:`~etpp_dali.data.sources.Source` of a sample list."""
    from etpp_dali.data.scan import ImageRecord
    from etpp_dali.data.sources import Source

    doc = json.loads(Path(path).read_text())
    return Source(doc["name"], doc["classes"], [ImageRecord(*r) for r in doc["records"]])


def build_loader(spec: WindowSpec) -> Running:
    """Build the loader ``spec.loader`` names (in this process)."""
    source = load_sample(spec.sample)
    if spec.loader in ("ours", "ours_resize", "ours_no_augment"):
        return _ours(spec, source, lowpass="resize" if spec.loader == "ours_resize" else "fourier",
                     randaugment=spec.loader != "ours_no_augment")
    if spec.loader.startswith(("ours_echo", "ours_tensor")):
        tensor = spec.loader.startswith("ours_tensor")
        factor = int(spec.loader.rsplit("echo" if not tensor else "tensor", 1)[1])
        return _ours(spec, source, lowpass="fourier", randaugment=True, replay=factor,
                     echo="tensor" if tensor else factor)
    builders = {"reference": _reference, "timm": _timm, "dali": _plain_dali, "decode": _decode_only}
    if spec.loader in builders:
        return builders[spec.loader](spec, source)
    if spec.loader in _STAGE_DEPTH:
        return _stages(spec, source, _STAGE_DEPTH[spec.loader])
    raise ValueError(f"loader {spec.loader!r} is unknown; use one of {', '.join(LOADERS)}")


# ---------------------------------------------------------------------------- ours
def _ours(spec: WindowSpec, source: Any, *, lowpass: str, randaugment: bool, replay: int = 1,
          echo: str | int = "augment") -> Running:
    from etpp_dali.curriculum.schedule import Curriculum, StageSpec
    from etpp_dali.loader.loaders import CurriculumLoader

    cur = Curriculum([StageSpec(band=spec.band, magnitude=float(spec.magnitude), share=1.0, replay=replay)],
                     budget=10_000, resolution=spec.resolution, split="epochs")
    loader = CurriculumLoader(source, cur, batch_size=spec.batch, device=spec.device, num_threads=spec.threads,
                              seed=spec.seed, lowpass=lowpass, randaugment=randaugment, echo=echo, verbose=False)

    def batches() -> Iterator[int]:
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for x, _ in loader:
                yield len(x)
            epoch += 1

    it = batches()
    return Running(lambda: next(it), loader.cfg.prefetch, loader.close, _dali_decoder(spec), str(loader.device),
                   _cuda_sync(spec))


def _dali_decoder(spec: WindowSpec) -> str:
    return "mixed" if spec.device == "cuda" else "cpu"


def _cuda_sync(spec: WindowSpec) -> Callable[[], None] | None:
    if spec.device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


# ------------------------------------------------------------------- torch DataLoaders
def _reference(spec: WindowSpec, source: Any) -> Running:
    from etpp_dali.bench.reference import reference_loader

    samples = [(r.path, r.label) for r in source.records]
    loader = reference_loader(samples, resolution=spec.resolution, band=spec.band, magnitude=spec.magnitude,
                              batch_size=spec.batch, workers=spec.threads, seed=spec.seed,
                              pin_memory=spec.device == "cuda")
    return _data_loader(spec, loader, loader)


def _timm(spec: WindowSpec, source: Any) -> Running:
    """timm's own loader at the band, as timm's train.py builds it (on a GPU with its prefetcher:
    uint8 batches normalised on the device)."""
    import torch
    from timm.data import create_loader

    from etpp_dali.bench.reference import ReferenceDataset, install_posterize_guard

    install_posterize_guard()  # forked workers inherit it; spawned ones get it from the dataset
    torch.manual_seed(spec.seed)
    cuda = spec.device == "cuda"
    dataset = ReferenceDataset([(r.path, r.label) for r in source.records], transform=None)
    loader = create_loader(dataset, input_size=(3, spec.band, spec.band), batch_size=spec.batch, is_training=True,
                           auto_augment=f"rand-m{int(spec.magnitude)}-mstd0.5-inc1", interpolation="bicubic",
                           re_prob=0.0, num_workers=spec.threads, persistent_workers=True, use_prefetcher=cuda,
                           pin_memory=cuda, device=torch.device("cuda" if cuda else "cpu"))
    return _data_loader(spec, loader, getattr(loader, "loader", loader))


def _data_loader(spec: WindowSpec, loader: Any, torch_loader: Any) -> Running:
    """Endless batches of a torch ``DataLoader`` (or a wrapper of one); ``close`` stops its
    worker processes."""
    import torch

    device = torch.device(spec.device)

    def batches() -> Iterator[int]:
        while True:
            for x, _ in loader:
                if x.device.type != device.type:
                    x = x.to(device, non_blocking=True)
                yield len(x)

    it = batches()

    def close() -> None:
        it.close()
        iterator = getattr(torch_loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # persistent workers: stop them now, not at exit
        torch_loader._iterator = None
        gc.collect()

    prefetch = spec.threads * (torch_loader.prefetch_factor or 2) if spec.threads else 0
    return Running(lambda: next(it), prefetch, close, "PIL", spec.device, _cuda_sync(spec))


# ------------------------------------------------------------------------- plain DALI
def _plain_dali_graph(files: list[str], labels: list[int], band: int, magnitude_bin: int, decoder: str):
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import rand_augment

    from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255

    jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=True, name="Reader")
    img = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB, random_area=[0.08, 1.0],
                                        random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10)
    img = fn.resize(img, resize_x=band, resize_y=band, interp_type=types.INTERP_CUBIC, antialias=True)
    img = rand_augment.rand_augment(img, n=2, m=magnitude_bin, shape=[band, band])
    img = fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW", mean=list(IMAGENET_MEAN_255),
                                   std=list(IMAGENET_STD_255), mirror=fn.random.coin_flip())
    return img, label


def dali_magnitude_bin(magnitude: float) -> int:
    """timm's level m (of 10) as a DALI RandAugment bin (of 31 bins, 0..30): about 3m."""
    return max(0, min(30, int(round(3 * magnitude))))


def _plain_dali(spec: WindowSpec, source: Any) -> Running:
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    files, labels = [r.path for r in source.records], [r.label for r in source.records]
    pipe = pipeline_def(_plain_dali_graph, enable_conditionals=True, **_dali_args(spec))(
        files, labels, spec.band, dali_magnitude_bin(spec.magnitude), _dali_decoder(spec))
    pipe.build()
    it = DALIGenericIterator(pipe, ["data", "label"], reader_name="Reader", auto_reset=True,
                             last_batch_policy=LastBatchPolicy.DROP)

    def next_batch() -> int:
        try:
            out = next(it)
        except StopIteration:  # the end of an epoch; auto_reset started the next
            out = next(it)
        return len(out[0]["data"])

    return Running(next_batch, 2, lambda: None, _dali_decoder(spec), spec.device, _cuda_sync(spec))


def _dali_args(spec: WindowSpec) -> dict[str, Any]:
    return {"batch_size": spec.batch, "num_threads": spec.threads, "seed": spec.seed, "prefetch_queue_depth": 2,
            "device_id": 0 if spec.device == "cuda" else None}


def _decode_graph(files: list[str], decoder: str):
    from nvidia.dali import fn, types

    jpegs, _ = fn.readers.file(files=files, random_shuffle=True)
    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)


def _decode_only(spec: WindowSpec, source: Any) -> Running:
    from nvidia.dali import pipeline_def

    pipe = pipeline_def(_decode_graph, **_dali_args(spec))([r.path for r in source.records], _dali_decoder(spec))
    pipe.build()
    return Running(lambda: (pipe.run(), spec.batch)[1], 2, lambda: None, _dali_decoder(spec), spec.device,
                   _cuda_sync(spec))


# ------------------------------------------------------------------ per-stage breakdown
def _stage_graph(cfg: Any, feed: Callable[[], tuple], depth: int):
    """Our training graph (:mod:`etpp_dali.loader.graphs`) cut after stage ``depth`` of
    decode (0), resize (1), flip + geometric ops (2), + colour ops (3), crop + normalise (4)."""
    from nvidia.dali import fn

    from etpp_dali.loader.graphs import TrainBatch, _decoder_args, named_external_source
    from etpp_dali.ops.dali_ops import apply_randaugment, lowpass, resize, warp_affine
    from etpp_dali.ops.randaugment import FILL

    fed = named_external_source(feed, TrainBatch.feed_names(True))
    jpegs, labels, anchor, shape, flip, band, matrix, geometric, colour, value = (fed[name] for name in (
        "encoded", "labels", "anchor", "shape", "flip", "band", "matrix", "geometric", "colour", "value"))
    size = (cfg.resolution, cfg.resolution)
    img = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", normalized_anchor=False,
                                  normalized_shape=False, **_decoder_args(cfg))
    if depth >= 1:
        img = resize(img, size=size, interpolation=cfg.interpolation)
    if depth >= 2:
        img = fn.flip(img, horizontal=flip)
    if depth == 2:  # the geometric ops alone
        if geometric:
            img = warp_affine(img, matrix, fill=FILL, size=size)
    if depth >= 3:  # the whole RandAugment: geometric, then colour ops
        img = apply_randaugment(img, matrix, geometric, colour, value, size)
    if depth >= 4:
        img = lowpass(img, band, mode="fourier", mean=cfg.mean, std=cfg.std, backend=cfg.fourier_backend)
    return img, labels


def _stages(spec: WindowSpec, source: Any, depth: int) -> Running:
    import numpy as np
    from nvidia.dali import pipeline_def

    from etpp_dali.loader.graphs import PipelineConfig, make_train_batch

    gpu = spec.device == "cuda"
    cfg = PipelineConfig(resolution=spec.resolution, batch_size=spec.batch, num_threads=spec.threads,
                         device="gpu" if gpu else "cpu", device_id=0 if gpu else None, seed=spec.seed)
    band = spec.band or spec.resolution
    labels, sizes = source.labels, source.sizes
    step = iter(range(1 << 62))

    def feed() -> tuple:  # the Python side of our loader: read the files, draw the batch's parameters
        s = next(step)
        rng = np.random.default_rng([spec.seed, s])
        idx = rng.integers(0, len(source), spec.batch)
        batch = make_train_batch([source.read(int(i)) for i in idx], labels[idx], sizes[idx], band=band,
                                 magnitude=spec.magnitude, epoch=0, step=s, rng=rng, cfg=cfg)
        return batch.as_feed(True)

    pipe = pipeline_def(_stage_graph, enable_conditionals=True, **_dali_args(spec))(cfg, feed, depth)
    pipe.build()
    return Running(lambda: (pipe.run(), spec.batch)[1], 2, lambda: None, _dali_decoder(spec), spec.device,
                   _cuda_sync(spec))
