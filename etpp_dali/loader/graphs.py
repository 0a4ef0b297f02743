"""The DALI graphs: training (curriculum) and validation, built from a small config.

Training, per sample: decode only the random-resized-crop window (``decoders.image_slice``:
region-of-interest decoding, on the GPU with the ``mixed`` backend), resize it to R x R
(bicubic, anti-aliased, as timm), flip, RandAugment at the stage's magnitude, then the
low-frequency crop to the stage's band with the normalisation fused: N x C x B x B float32.

Everything random is drawn on the Python side, per batch, from a generator seeded by
(seed, epoch, batch, rank), and fed through ``fn.external_source`` together with the encoded
bytes: the crop windows (timm's RandomResizedCrop: scale 0.08-1, ratio 3/4-4/3, 10 attempts,
then a centre crop), the flips, the RandAugment draws (made at the stage's magnitude) and the
band. So band and magnitude change per iteration without a rebuild, every batch carries the
settings it was made with (no prefetch lag), and a resumed run draws the same numbers.

The external source's fields and the graph's outputs are named once (``TrainBatch.FEED``,
``TRAIN_OUTPUTS``, ...) and bound by name on both sides.

Validation: decode, resize the shorter side to ``floor(R / 0.875)`` (256 for R = 224, bicubic),
centre crop R, normalise; every image once. Both the resized size and the crop's place are
computed here in Python, as torchvision's ``Resize(int)`` and ``CenterCrop`` compute them, and
fed per sample, so the CPU and GPU graphs crop the same pixels (DALI's own ``resize_shorter``
rounds the longer side where torchvision truncates it, and its centre crop rounds half up where
torchvision rounds half to even).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from etpp_dali.ops.dali_ops import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    LOWPASS_MODES,
    map_samples,
    resize_hwc,
    torch_resize_mode,
)
from etpp_dali.ops.randaugment import RandAugmentParams, sample_randaugment

__all__ = ["PipelineConfig", "TrainBatch", "ValBatch", "TRAIN_OUTPUTS", "VAL_OUTPUTS", "define_train_pipeline",
           "define_val_pipeline", "define_decode_pipeline", "define_echo_pipeline", "DECODE_OUTPUTS",
           "ECHO_FEED", "make_train_batch", "make_val_batch", "named_external_source",
           "sample_crop_windows", "centre_crop_geometry", "val_resize_size"]

INTERPOLATIONS = ("cubic", "linear")
TRAIN_OUTPUTS = ("images", "labels", "tag")
DECODE_OUTPUTS = ("decoded",)
# the echo graph's feed: a training batch whose first field holds decoded images, not encoded bytes
ECHO_FEED = ("decoded",) + ("labels", "anchor", "shape", "flip", "band", "tag")
VAL_OUTPUTS = ("images", "labels")


@dataclass
class PipelineConfig:
    """What the graphs are built from. ``device``: ``"cpu"`` or ``"gpu"``; ``device_id``: the CUDA
    device of a ``"gpu"`` graph (None: the current one), None for ``"cpu"``."""

    resolution: int = 224
    batch_size: int = 64
    num_threads: int = 2
    device: str = "cpu"
    device_id: int | None = None
    seed: int = 0
    lowpass: str = "fourier"
    fourier_backend: str = "auto"
    randaugment: bool = True
    interpolation: str = "cubic"
    hw_decoder_load: float = 0.65
    prefetch: int = 2
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 0.875
    mean: Sequence[float] = field(default_factory=lambda: list(IMAGENET_MEAN_255))
    std: Sequence[float] = field(default_factory=lambda: list(IMAGENET_STD_255))

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device = {self.device!r} is unknown; use 'cpu' or 'gpu'")
        if self.lowpass not in LOWPASS_MODES:
            raise ValueError(f"lowpass = {self.lowpass!r} is unknown; use one of {', '.join(LOWPASS_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation = {self.interpolation!r} is unknown; use one of {', '.join(INTERPOLATIONS)}")
        if self.resolution < 16:
            raise ValueError(f"resolution = {self.resolution} is too small; use at least 16")
        if self.batch_size < 1 or self.num_threads < 1:
            raise ValueError("batch_size and num_threads must be >= 1")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load = {self.hw_decoder_load} is outside 0..1")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct = {self.crop_pct} is outside (0, 1]")
        if self.device == "cpu" and self.device_id is not None:
            raise ValueError(f"device_id = {self.device_id} selects a GPU, but device = 'cpu'; leave device_id out")


def val_resize_size(resolution: int, crop_pct: float = 0.875) -> int:
    """Shorter side before the centre crop, as timm computes it."""
    return int(math.floor(resolution / crop_pct))


def centre_crop_geometry(sizes: np.ndarray, resolution: int,
                         crop_pct: float = 0.875) -> tuple[np.ndarray, np.ndarray]:
    """Where timm's evaluation transform takes the pixels of images of ``sizes`` (N, 2) = (h, w).

    Returns the resized ``(h, w)`` and the crop's top-left ``(y, x)``, each (N, 2) int64:
    torchvision's ``Resize(s)`` with ``s = floor(R / crop_pct)`` (the shorter side to s, the
    longer one to ``int(s * long / short)``, truncated), then ``CenterCrop(R)`` (offset
    ``round((side - R) / 2)``, half to even as Python rounds).
    """
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    shorter = val_resize_size(resolution, crop_pct)
    h, w = sizes[:, 0], sizes[:, 1]
    short, long = np.minimum(h, w), np.maximum(h, w)
    new_long = (shorter * long / short).astype(np.int64)  # float64 then truncated, as int() in torchvision
    resized = np.where((w <= h)[:, None], np.stack([new_long, np.full_like(h, shorter)], 1),
                       np.stack([np.full_like(h, shorter), new_long], 1))
    anchor = np.round((resized - resolution) / 2.0).astype(np.int64)  # NumPy rounds half to even too
    return resized, anchor


# ----------------------------------------------------------------------------- sampling
def sample_crop_windows(rng: np.random.Generator, sizes: np.ndarray, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """timm's / torchvision's RandomResizedCrop windows for images of ``sizes`` (N, 2) = (h, w).

    Returns ``anchor`` and ``shape``, each (N, 2) as (y, x) and (h, w) in pixels. Up to
    ``attempts`` draws of area and log-uniform aspect ratio; the first that fits is taken, else
    a centre crop with the aspect ratio clamped to ``ratio``.
    """
    n = len(sizes)
    h_img, w_img = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    area = (h_img * w_img)[:, None]
    target = area * rng.uniform(scale[0], scale[1], size=(n, attempts))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, attempts)))
    w = np.rint(np.sqrt(target * aspect))
    h = np.rint(np.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= w_img[:, None]) & (h <= h_img[:, None])
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    cw, ch = w[np.arange(n), first], h[np.arange(n), first]
    # fallback: centre crop of the whole image with the ratio clamped
    in_ratio = w_img / h_img
    fw = np.where(in_ratio < ratio[0], w_img, np.where(in_ratio > ratio[1], np.rint(h_img * ratio[1]), w_img))
    fh = np.where(in_ratio < ratio[0], np.rint(w_img / ratio[0]), h_img)
    cw, ch = np.where(found, cw, fw), np.where(found, ch, fh)
    u = rng.random((n, 2))
    y = np.where(found, np.floor(u[:, 0] * (h_img - ch + 1)), (h_img - ch) // 2)
    x = np.where(found, np.floor(u[:, 1] * (w_img - cw + 1)), (w_img - cw) // 2)
    return np.stack([y, x], 1).astype(np.float32), np.stack([ch, cw], 1).astype(np.float32)


@dataclass
class TrainBatch:
    """One batch of pipeline inputs: what DALI decodes and the draws it applies.

    ``FEED`` names the fields that go to DALI (in this order), ``AUGMENT_FEED`` the fields of
    ``augment`` that follow them when the graph runs RandAugment; the graph binds its inputs by
    these names. The magnitude stays here: it only shaped the draws.
    """

    encoded: list[np.ndarray]
    labels: np.ndarray
    anchor: np.ndarray
    shape: np.ndarray
    flip: np.ndarray
    band: np.ndarray
    tag: np.ndarray  # (N, 2) int32: (epoch, step), read back from the outputs
    augment: RandAugmentParams

    FEED: ClassVar[tuple[str, ...]] = ("encoded", "labels", "anchor", "shape", "flip", "band", "tag")
    AUGMENT_FEED: ClassVar[tuple[str, ...]] = ("matrix", "geometric", "colour", "value")

    @classmethod
    def feed_names(cls, with_augment: bool) -> tuple[str, ...]:
        """The external source's outputs; the RandAugment draws only when the graph uses them."""
        return cls.FEED + (cls.AUGMENT_FEED if with_augment else ())

    def as_feed(self, with_augment: bool) -> tuple:
        """The values of :meth:`feed_names`, in that order."""
        return tuple(getattr(self.augment if name in self.AUGMENT_FEED else self, name)
                     for name in self.feed_names(with_augment))


def make_train_batch(encoded: list[np.ndarray], labels: np.ndarray, sizes: np.ndarray, *, band: int,
                     magnitude: float, epoch: int, step: int, rng: np.random.Generator,
                     cfg: PipelineConfig) -> TrainBatch:
    """Draw the crop windows, flips and RandAugment parameters of one batch."""
    n = len(encoded)
    anchor, shape = sample_crop_windows(rng, sizes, cfg.scale, cfg.ratio)
    flip = (rng.random(n) < 0.5).astype(np.int32)
    augment = sample_randaugment(rng, np.full(n, magnitude, dtype=np.float32),
                                 (cfg.resolution, cfg.resolution), enabled=cfg.randaugment)
    return TrainBatch(encoded, labels.astype(np.int64), anchor, shape, flip,
                      np.full(n, band, dtype=np.int32), np.tile(np.array([epoch, step], np.int32), (n, 1)),
                      augment)


@dataclass
class ValBatch:
    """One validation batch: the encoded images, their labels, and per image the resized
    ``size`` (h, w) and the centre crop's normalised place (``crop_y``, ``crop_x``), as DALI's
    ``crop_pos_y``/``crop_pos_x`` take it. ``FEED`` names what goes to DALI, in order."""

    encoded: list[np.ndarray]
    labels: np.ndarray
    size: np.ndarray
    crop_y: np.ndarray
    crop_x: np.ndarray

    FEED: ClassVar[tuple[str, ...]] = ("encoded", "labels", "size", "crop_y", "crop_x")

    def as_feed(self) -> tuple:
        return tuple(getattr(self, name) for name in self.FEED)


def make_val_batch(encoded: list[np.ndarray], labels: np.ndarray, sizes: np.ndarray,
                   cfg: PipelineConfig) -> ValBatch:
    """The inputs of one validation batch of images of ``sizes`` (N, 2) = (h, w)."""
    resized, anchor = centre_crop_geometry(sizes, cfg.resolution, cfg.crop_pct)
    room = resized - cfg.resolution
    # DALI places the crop at round(pos * room); anchor / room lands on the anchor exactly
    pos = np.where(room > 0, anchor / np.maximum(room, 1), 0.5).astype(np.float32)
    crop_y, crop_x = np.ascontiguousarray(pos.T)
    return ValBatch(encoded, labels.astype(np.int64), resized.astype(np.float32), crop_y, crop_x)


# ----------------------------------------------------------------------------- graphs
def _decoder_args(cfg: PipelineConfig) -> dict:
    from nvidia.dali import types

    args = {"device": "mixed" if cfg.device == "gpu" else "cpu", "output_type": types.RGB,
            "adjust_orientation": False}  # sizes come from the file header, as PIL reports them
    if cfg.device == "gpu":
        args["hw_decoder_load"] = cfg.hw_decoder_load
    return args


def named_external_source(feed: Callable[[], tuple], names: Sequence[str]) -> dict[str, Any]:
    """The outputs of ``fn.external_source(feed)`` by name, inside a pipeline definition;
    ``feed()`` returns the values of ``names`` in that order (e.g. ``TrainBatch.feed_names(True)``
    and ``TrainBatch.as_feed(True)``)."""
    from nvidia.dali import fn

    return dict(zip(names, fn.external_source(source=feed, num_outputs=len(names), batch=True)))


def _train_graph(cfg: PipelineConfig, feed: Callable[[], tuple]):
    from nvidia.dali import fn

    from etpp_dali.ops.dali_ops import resize

    fed = named_external_source(feed, TrainBatch.feed_names(cfg.randaugment))
    img = fn.decoders.image_slice(fed["encoded"], fed["anchor"], fed["shape"], axis_names="HW",
                                  normalized_anchor=False, normalized_shape=False, **_decoder_args(cfg))
    img = resize(img, size=(cfg.resolution, cfg.resolution), interpolation=cfg.interpolation)
    return _augment_and_cut(img, fed, cfg)


def _augment_and_cut(img: Any, fed: dict[str, Any], cfg: PipelineConfig) -> dict[str, Any]:
    """What both training graphs do to an R x R image: flip, RandAugment, the low-pass to the band."""
    from nvidia.dali import fn

    from etpp_dali.ops.dali_ops import apply_randaugment, lowpass

    img = fn.flip(img, horizontal=fed["flip"])
    if cfg.randaugment:
        matrix, geometric, colour, value = (fed[name] for name in TrainBatch.AUGMENT_FEED)
        img = apply_randaugment(img, matrix, geometric, colour, value, (cfg.resolution, cfg.resolution))
    img = lowpass(img, fed["band"], mode=cfg.lowpass, mean=cfg.mean, std=cfg.std, backend=cfg.fourier_backend)
    return {"images": img, "labels": fed["labels"], "tag": fed["tag"]}


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
    from nvidia.dali import fn, types

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


def _echo_graph(cfg: PipelineConfig, feed: Callable[[], tuple]):
    """The augment stage of echo: decoded images in (on the loader's device), training samples out."""
    from nvidia.dali import fn

    names = ECHO_FEED + (TrainBatch.AUGMENT_FEED if cfg.randaugment else ())
    split = _SplitFeed(feed)
    (decoded,) = fn.external_source(source=split.images, num_outputs=1, batch=True, device=cfg.device,
                                    no_copy=cfg.device == "cpu")  # the feed keeps its arrays alive long enough
    draws = fn.external_source(source=split.draws, num_outputs=len(names) - 1, batch=True)
    fed = dict(zip(names, [decoded, *draws]))
    img = _window_resize(fed["decoded"], fed["anchor"], fed["shape"], cfg)
    return _augment_and_cut(img, fed, cfg)


def _decode_graph(cfg: PipelineConfig, feed: Callable[[], tuple] | None):
    """The decode stage of echo: whole images, RGB, on the loader's device; its input is given
    with ``feed_input("encoded", ...)`` before each run."""
    from nvidia.dali import fn

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
    from nvidia.dali import fn, types

    if img.device == "gpu":
        interp = types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR
        return fn.resize(img, size=size, interp_type=interp, antialias=True)
    return fn.python_function(img, size, function=_ResizeEach(interpolation), batch_processing=True,
                              device="cpu", output_layouts="HWC")


def _val_graph(cfg: PipelineConfig, feed: Callable[[], tuple]):
    from nvidia.dali import fn, types

    fed = named_external_source(feed, ValBatch.FEED)
    img = fn.decoders.image(fed["encoded"], **_decoder_args(cfg))
    img = _resize_each(img, fed["size"], cfg.interpolation)
    img = fn.crop_mirror_normalize(img, crop=(cfg.resolution, cfg.resolution), crop_pos_x=fed["crop_x"],
                                   crop_pos_y=fed["crop_y"], mean=list(cfg.mean), std=list(cfg.std),
                                   output_layout="CHW", dtype=types.FLOAT)
    return {"images": img, "labels": fed["labels"]}


def _define(graph: Callable[..., dict], outputs: Sequence[str], cfg: PipelineConfig, feed: Callable[[], tuple],
            conditionals: bool) -> Any:
    from nvidia.dali import pipeline_def

    def ordered(cfg: PipelineConfig, feed: Callable[[], tuple]) -> tuple:
        named = graph(cfg, feed)
        return tuple(named[name] for name in outputs)

    return pipeline_def(ordered, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                        device_id=cfg.device_id if cfg.device == "gpu" else None, seed=cfg.seed,
                        prefetch_queue_depth=cfg.prefetch, enable_conditionals=conditionals)(cfg, feed)


def define_train_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple]) -> Any:
    """The training pipeline, defined (not built: no GPU is touched yet). ``feed()`` returns
    ``TrainBatch.as_feed(cfg.randaugment)`` batch after batch and raises ``StopIteration`` at the
    end. Outputs: ``TRAIN_OUTPUTS`` (images, labels, tag), in that order."""
    return _define(_train_graph, TRAIN_OUTPUTS, cfg, feed, conditionals=cfg.randaugment)


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
