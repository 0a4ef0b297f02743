"""The DALI graphs: training (curriculum) and validation, built from a small config.

Training, per sample, in named stages (:data:`TRAIN_STAGES`): ``decode`` (after reading the
file, when the graph reads its files: ``PipelineConfig.read_files``) only the
random-resized-crop window (``decoders.image_slice``: region-of-interest decoding, on the GPU
with the ``mixed`` backend), ``resize`` it to R x R (bicubic, anti-aliased, as timm), ``warp``:
flip and RandAugment's geometric ops (one affine warp), ``colour``: RandAugment's colour ops,
then ``crop``: the low-frequency crop to the stage's band with the normalisation fused:
N x C x B x B float32. ``define_train_pipeline(..., stop_after=stage)`` ends the same graph after
a stage (its images are then that stage's output): the benchmark's per-stage breakdown times
the real graph, cut, rather than a copy of it.

What the graphs are fed, batch by batch (the draws, made on the Python side) and the config
they are built from: :mod:`etpp_dali.loader.feeds`. The external source's fields and the
graphs' outputs are named once (``TrainBatch.FEED``, ``TRAIN_OUTPUTS``, ...) and bound by name
on both sides.

Validation: decode, resize the shorter side to ``floor(R / 0.875)`` (256 for R = 224, bicubic),
centre crop R at the place the feed gives (torchvision's), normalise; every image once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from etpp_dali.loader.feeds import (
    ECHO_FEED,
    INTERPOLATIONS,
    PipelineConfig,
    TrainBatch,
    ValBatch,
    centre_crop_geometry,
    make_train_batch,
    make_val_batch,
    sample_crop_windows,
    val_resize_size,
)
from etpp_dali.ops.dali_ops import (
    apply_drawn_colour_ops,
    apply_geometric_ops,
    lowpass,
    map_samples,
    resize,
    resize_hwc,
    torch_resize_mode,
)

# the feed's names and helpers are also importable from here, where they lived before feeds.py
__all__ = ["PipelineConfig", "TrainBatch", "ValBatch", "TRAIN_OUTPUTS", "VAL_OUTPUTS", "TRAIN_STAGES",
           "define_train_pipeline", "define_val_pipeline", "define_decode_pipeline", "define_echo_pipeline",
           "DECODE_OUTPUTS", "ECHO_FEED", "INTERPOLATIONS", "make_train_batch", "make_val_batch",
           "named_external_source", "sample_crop_windows", "centre_crop_geometry", "val_resize_size"]

TRAIN_OUTPUTS = ("images", "labels", "tag")
DECODE_OUTPUTS = ("decoded",)
VAL_OUTPUTS = ("images", "labels")


# ----------------------------------------------------------------------------- graphs
def _decoder_args(cfg: PipelineConfig) -> dict:
    args = {"device": "mixed" if cfg.device == "gpu" else "cpu", "output_type": types.RGB,
            "adjust_orientation": False}  # sizes come from the file header, as PIL reports them
    if cfg.device == "gpu":
        args["hw_decoder_load"] = cfg.hw_decoder_load
    return args


def named_external_source(feed: Callable[[], tuple], names: Sequence[str]) -> dict[str, Any]:
    """The outputs of ``fn.external_source(feed)`` by name, inside a pipeline definition;
    ``feed()`` returns the values of ``names`` in that order (e.g. ``TrainBatch.feed_names(True)``
    and ``TrainBatch.as_feed(True)``)."""
    return dict(zip(names, fn.external_source(source=feed, num_outputs=len(names), batch=True)))


# The training graph's stages, in order: each takes the image so far (None before the decoder),
# the feed's values by name and the config. The echo graph starts at "warp", from its own
# resize of decoded images.
def _encoded(fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    """The encoded images: fed as bytes, or read here from the paths fed (``cfg.read_files``;
    plain reads, not memory maps, so a file truncated under a running job fails its read rather
    than the process)."""
    return fn.io.file.read(fed["encoded"], dont_use_mmap=True) if cfg.read_files else fed["encoded"]


def _decode_window(_: Any, fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    return fn.decoders.image_slice(_encoded(fed, cfg), fed["anchor"], fed["shape"], axis_names="HW",
                                   normalized_anchor=False, normalized_shape=False, **_decoder_args(cfg))


def _resize_to_resolution(img: Any, fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    return resize(img, size=(cfg.resolution, cfg.resolution), interpolation=cfg.interpolation)


def _flip_and_warp(img: Any, fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    img = fn.flip(img, horizontal=fed["flip"])
    if cfg.randaugment:
        img = apply_geometric_ops(img, fed["matrix"], fed["geometric"], (cfg.resolution, cfg.resolution))
    return img


def _colour_ops(img: Any, fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    return apply_drawn_colour_ops(img, fed["colour"], fed["value"]) if cfg.randaugment else img


def _lowpass_to_band(img: Any, fed: dict[str, Any], cfg: PipelineConfig) -> Any:
    return lowpass(img, fed["band"], mode=cfg.lowpass, mean=cfg.mean, std=cfg.std, backend=cfg.fourier_backend)


_AUGMENT_STAGES = (("warp", _flip_and_warp), ("colour", _colour_ops), ("crop", _lowpass_to_band))
_STAGES = (("decode", _decode_window), ("resize", _resize_to_resolution)) + _AUGMENT_STAGES
TRAIN_STAGES = tuple(name for name, _ in _STAGES)


def _run_stages(img: Any, fed: dict[str, Any], cfg: PipelineConfig, stages: Sequence[tuple[str, Callable]],
                stop_after: str | None) -> dict[str, Any]:
    """The training outputs after ``stages``, or after the one named ``stop_after``."""
    for name, stage in stages:
        img = stage(img, fed, cfg)
        if name == stop_after:
            break
    return {"images": img, "labels": fed["labels"], "tag": fed["tag"]}


def _train_graph(cfg: PipelineConfig, feed: Callable[[], tuple], stop_after: str | None = None) -> dict[str, Any]:
    fed = named_external_source(feed, TrainBatch.feed_names(cfg.randaugment))
    return _run_stages(None, fed, cfg, _STAGES, stop_after)


class _WindowResize:
    """Batch function: each HWC uint8 image's crop window (a view, no copy) resized to ``size``
    with the same torch kernels as :func:`etpp_dali.ops.dali_ops.resize` on the CPU."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        self.size, self.mode = size, torch_resize_mode(interpolation)

    def _one(self, item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        img, anchor, shape = item
        (y, x), (h, w) = anchor.astype(np.int64), shape.astype(np.int64)
        return resize_hwc(img[y:y + h, x:x + w], self.size, self.mode)

    def __call__(self, images: list[np.ndarray], anchors: list[np.ndarray],
                 shapes: list[np.ndarray]) -> list[np.ndarray]:
        return map_samples(self._one, list(zip(images, anchors, shapes)))


def _window_resize(img: Any, anchor: Any, shape: Any, cfg: PipelineConfig) -> Any:
    """The crop window of each decoded image, resized to R x R (what the single graph's
    ``image_slice`` + resize make, from a decoded image)."""
    size = (cfg.resolution, cfg.resolution)
    if img.device == "gpu":
        interp = types.INTERP_CUBIC if cfg.interpolation == "cubic" else types.INTERP_LINEAR
        return fn.resize(img, size=list(size), roi_start=anchor, roi_end=anchor + shape, roi_relative=False,
                         interp_type=interp, antialias=True)
    return fn.python_function(img, anchor, shape, function=_WindowResize(size, cfg.interpolation),
                              batch_processing=True, device="cpu", output_layouts="HWC")


class _SplitFeed:
    """One feed as two external sources: the decoded images (on the graph's device) and the
    draws (on the CPU, where operator arguments live). Whichever DALI asks first pulls the
    iteration's values; the other takes its part of them."""

    def __init__(self, feed: Callable[[], tuple]) -> None:
        self.feed = feed
        self.parts: tuple[list, list] = ([], [])

    def images(self) -> tuple:
        return self._pull(0)

    def draws(self) -> tuple:
        return self._pull(1)

    def _pull(self, k: int) -> tuple:
        if not self.parts[k]:
            values = self.feed()
            self.parts[0].append(values[:1])
            self.parts[1].append(values[1:])
        return self.parts[k].pop(0)


def _echo_graph(cfg: PipelineConfig, feed: Callable[[], tuple]) -> dict[str, Any]:
    """The augment stage of echo: decoded images in (on the loader's device), training samples out."""
    names = ECHO_FEED + (TrainBatch.AUGMENT_FEED if cfg.randaugment else ())
    split = _SplitFeed(feed)
    (decoded,) = fn.external_source(source=split.images, num_outputs=1, batch=True, device=cfg.device,
                                    no_copy=cfg.device == "cpu")  # the feed keeps its arrays alive long enough
    draws = fn.external_source(source=split.draws, num_outputs=len(names) - 1, batch=True)
    fed = dict(zip(names, [decoded, *draws]))
    img = _window_resize(fed["decoded"], fed["anchor"], fed["shape"], cfg)
    return _run_stages(img, fed, cfg, _AUGMENT_STAGES, None)


def _decode_graph(cfg: PipelineConfig, feed: Callable[[], tuple] | None) -> dict[str, Any]:
    """The decode stage of echo: whole images, RGB, on the loader's device; its input is given
    with ``feed_input("encoded", ...)`` before each run."""
    encoded = fn.external_source(name="encoded")
    return {"decoded": fn.decoders.image(encoded, **_decoder_args(cfg))}


class _ResizeEach:
    """Batch function: each HWC uint8 image to its own (h, w), anti-aliased, with torch's uint8
    kernels (the CPU resize of :func:`etpp_dali.ops.dali_ops.resize`, with per-sample sizes)."""

    def __init__(self, interpolation: str) -> None:
        self.mode = torch_resize_mode(interpolation)

    def __call__(self, images: list[np.ndarray], sizes: list[np.ndarray]) -> list[np.ndarray]:
        return map_samples(lambda pair: resize_hwc(pair[0], pair[1], self.mode), list(zip(images, sizes)))


def _resize_each(img: Any, size: Any, interpolation: str) -> Any:
    """Resize each image to its own ``size`` (a per-sample (h, w) float DataNode)."""
    if img.device == "gpu":
        interp = types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR
        return fn.resize(img, size=size, interp_type=interp, antialias=True)
    return fn.python_function(img, size, function=_ResizeEach(interpolation), batch_processing=True,
                              device="cpu", output_layouts="HWC")


def _val_graph(cfg: PipelineConfig, feed: Callable[[], tuple]) -> dict[str, Any]:
    fed = named_external_source(feed, ValBatch.FEED)
    img = fn.decoders.image(_encoded(fed, cfg), **_decoder_args(cfg))
    img = _resize_each(img, fed["size"], cfg.interpolation)
    img = fn.crop_mirror_normalize(img, crop=(cfg.resolution, cfg.resolution), crop_pos_x=fed["crop_x"],
                                   crop_pos_y=fed["crop_y"], mean=list(cfg.mean), std=list(cfg.std),
                                   output_layout="CHW", dtype=types.FLOAT)
    return {"images": img, "labels": fed["labels"]}


def _define(graph: Callable[..., dict], outputs: Sequence[str], cfg: PipelineConfig, feed: Callable[[], tuple],
            conditionals: bool, **options: Any) -> Any:
    def ordered(cfg: PipelineConfig, feed: Callable[[], tuple]) -> tuple:
        named = graph(cfg, feed, **options)
        return tuple(named[name] for name in outputs)

    return pipeline_def(ordered, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                        device_id=cfg.device_id if cfg.device == "gpu" else None, seed=cfg.seed,
                        prefetch_queue_depth=cfg.prefetch, enable_conditionals=conditionals)(cfg, feed)


def define_train_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple], stop_after: str | None = None) -> Any:
    """The training pipeline, defined (not built: no GPU is touched yet). ``feed()`` returns
    ``TrainBatch.as_feed(cfg.randaugment)`` batch after batch and raises ``StopIteration`` at the
    end. Outputs: ``TRAIN_OUTPUTS`` (images, labels, tag), in that order.

    ``stop_after``: one of :data:`TRAIN_STAGES` ends the graph after that stage, whose output is
    then ``images`` (``"decode"``: the crop windows as decoded, HWC uint8 of their own sizes;
    ``"resize"``: R x R; ``"warp"``: flipped and warped; ``"colour"``: with the colour ops, still
    HWC uint8; ``"crop"``: the whole graph, as None). The stages before the cut are the training
    graph's own, so a cut graph times (and outputs) exactly what the full one computes there.
    """
    if stop_after is not None and stop_after not in TRAIN_STAGES:
        raise ValueError(f"stop_after = {stop_after!r} is unknown; use one of {', '.join(TRAIN_STAGES)} or None")
    return _define(_train_graph, TRAIN_OUTPUTS, cfg, feed, conditionals=cfg.randaugment, stop_after=stop_after)


def define_val_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple]) -> Any:
    """The validation pipeline, defined (not built). ``feed()`` returns ``ValBatch.as_feed()``.
    Outputs: ``VAL_OUTPUTS`` (images, labels), in that order."""
    return _define(_val_graph, VAL_OUTPUTS, cfg, feed, conditionals=False)


def define_echo_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple]) -> Any:
    """The augment stage of echo, defined (not built). ``feed()`` returns the values of
    ``ECHO_FEED`` (then ``TrainBatch.AUGMENT_FEED`` with RandAugment): the decoded images
    (numpy arrays on the CPU, CUDA tensors on the GPU) and the draws. Outputs: ``TRAIN_OUTPUTS``."""
    return _define(_echo_graph, TRAIN_OUTPUTS, cfg, feed, conditionals=cfg.randaugment)


def define_decode_pipeline(cfg: PipelineConfig) -> Any:
    """The decode stage of echo, defined (not built), run one batch at a time: give it a list of
    encoded images (up to ``cfg.batch_size``) with ``feed_input("encoded", images)``, then
    ``run()``. Outputs: ``DECODE_OUTPUTS``."""
    return _define(_decode_graph, DECODE_OUTPUTS, replace(cfg, prefetch=1), None, conditionals=False)
