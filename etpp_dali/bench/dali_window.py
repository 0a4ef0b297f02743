"""The window module of our loader and DALI's: ``python -m etpp_dali.bench.dali_window SPEC RESULT``
times one of them (:mod:`etpp_dali.bench.window`). Imports DALI and the loader wing, not timm.

Ours goes through :class:`~etpp_dali.loader.loaders.CurriculumLoader` at one stage; the per-stage
breakdown builds our training graph itself, cut after a stage (``define_train_pipeline(...,
stop_after=...)``), fed as our loader feeds it; DALI's own pipelines are set up in DALI's idiom.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from etpp_dali.bench.loaders import BREAKDOWN, Running, WindowSpec
from etpp_dali.bench.window import cuda_sync, exit_window, main
from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.data.sources import Source
from etpp_dali.loader.feeds import PipelineConfig, make_train_batch
from etpp_dali.loader.graphs import define_train_pipeline
from etpp_dali.loader.loaders import CurriculumLoader
from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255

__all__ = ["build_loader", "dali_magnitude_bin"]


def build_loader(spec: WindowSpec, source: Source) -> Running:
    """Build the loader ``spec.loader`` names over ``source`` (in this process)."""
    name = spec.loader
    if name in ("ours", "ours_resize", "ours_no_augment"):
        return _ours(spec, source, lowpass="resize" if name == "ours_resize" else "fourier",
                     randaugment=name != "ours_no_augment")
    if name.startswith(("ours_echo", "ours_tensor")):
        tensor = name.startswith("ours_tensor")
        factor = int(name.rsplit("tensor" if tensor else "echo", 1)[1])
        return _ours(spec, source, lowpass="fourier", randaugment=True, replay=factor,
                     echo="tensor" if tensor else factor)
    if name in BREAKDOWN[:-1]:
        return _graph_cut(spec, source, name.removeprefix("stage_"))
    if name == "dali":
        return _plain_dali(spec, source)
    if name == "decode":
        return _decode_only(spec, source)
    raise ValueError(f"loader {name!r} is not one of DALI's or ours")


def _dali_decoder(spec: WindowSpec) -> str:
    return "mixed" if spec.device == "cuda" else "cpu"


def _nothing_to_close() -> None:
    """A DALI pipeline's threads and buffers go with the process (a window ends there)."""


def _pipeline_runs(pipe: Any, images_per_run: int) -> Callable[[], int]:
    """``next_batch`` of a DALI pipeline run for its outputs' sake: one run, its image count."""
    def run() -> int:
        pipe.run()
        return images_per_run

    return run


def _dali_running(spec: WindowSpec, next_batch: Callable[[], int]) -> Running:
    """A DALI pipeline of our window's settings (prefetch 2, the window's device)."""
    return Running(next_batch=next_batch, prefetch=2, close=_nothing_to_close, decoder=_dali_decoder(spec),
                   output_device=spec.device, sync=cuda_sync(spec))


# ---------------------------------------------------------------------------- ours
def _ours(spec: WindowSpec, source: Source, *, lowpass: str, randaugment: bool, replay: int = 1,
          echo: str | int = "augment") -> Running:
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
    return Running(next_batch=lambda: next(it), prefetch=loader.cfg.prefetch, close=loader.close,
                   decoder=_dali_decoder(spec), output_device=str(loader.device), sync=cuda_sync(spec))


def _graph_cut(spec: WindowSpec, source: Source, stage: str) -> Running:
    """Our training graph, cut after ``stage``, fed as the loader feeds it (read the files, draw
    the batch's parameters) from random images of the sample."""
    gpu = spec.device == "cuda"
    cfg = PipelineConfig(resolution=spec.resolution, batch_size=spec.batch, num_threads=spec.threads,
                         device="gpu" if gpu else "cpu", device_id=0 if gpu else None, seed=spec.seed)
    band = spec.band or spec.resolution
    labels, sizes = source.labels, source.sizes
    steps = iter(range(1 << 62))

    def feed() -> tuple:
        step = next(steps)
        rng = np.random.default_rng([spec.seed, step])
        idx = rng.integers(0, len(source), spec.batch)
        batch = make_train_batch([source.read(int(i)) for i in idx], labels[idx], sizes[idx], band=band,
                                 magnitude=spec.magnitude, epoch=0, step=step, rng=rng, cfg=cfg)
        return batch.as_feed(cfg.randaugment)

    pipe = define_train_pipeline(cfg, feed, stop_after=stage)
    pipe.build()
    return _dali_running(spec, _pipeline_runs(pipe, spec.batch))


# ------------------------------------------------------------------------- plain DALI
def _plain_dali_graph(files: list[str], labels: list[int], band: int, magnitude_bin: int, decoder: str) -> tuple:
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


def _plain_dali(spec: WindowSpec, source: Source) -> Running:
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

    return _dali_running(spec, next_batch)


def _dali_args(spec: WindowSpec) -> dict[str, Any]:
    return {"batch_size": spec.batch, "num_threads": spec.threads, "seed": spec.seed, "prefetch_queue_depth": 2,
            "device_id": 0 if spec.device == "cuda" else None}


def _decode_graph(files: list[str], decoder: str) -> Any:
    jpegs, _ = fn.readers.file(files=files, random_shuffle=True)
    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)


def _decode_only(spec: WindowSpec, source: Source) -> Running:
    pipe = pipeline_def(_decode_graph, **_dali_args(spec))([r.path for r in source.records], _dali_decoder(spec))
    pipe.build()
    return _dali_running(spec, _pipeline_runs(pipe, spec.batch))


if __name__ == "__main__":
    exit_window(main(build_loader))
