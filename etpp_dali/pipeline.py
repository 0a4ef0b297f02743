"""The DALI graphs: training (curriculum) and validation, built from a small config.

Training, per sample: decode only the random-resized-crop window (``decoders.image_slice``:
region-of-interest decoding, on the GPU with the ``mixed`` backend), resize it to R x R
(bicubic, anti-aliased, as timm), flip, RandAugment at the stage's magnitude, then the
low-frequency crop to the stage's band with the normalisation fused: N x C x B x B float32.

Everything random is drawn on the Python side, per batch, from a generator seeded by
(seed, epoch, batch, rank), and fed through ``fn.external_source`` together with the encoded
bytes: the crop windows (timm's RandomResizedCrop: scale 0.08-1, ratio 3/4-4/3, 10 attempts,
then a centre crop), the flips, the RandAugment draws, the band and the magnitude. So band and
magnitude change per iteration without a rebuild, every batch carries the settings it was made
with (no prefetch lag), and a resumed run draws the same numbers.

Validation: decode, resize the shorter side to ``floor(R / 0.875)`` (256 for R = 224, bicubic),
centre crop R, normalise; every image once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, LOWPASS_MODES
from .randaugment import RandAugmentParams, sample_randaugment

__all__ = ["PipelineConfig", "TrainBatch", "build_train_pipeline", "build_val_pipeline",
           "make_train_batch", "sample_crop_windows", "val_resize_size"]

INTERPOLATIONS = ("cubic", "linear")


@dataclass
class PipelineConfig:
    """What the graphs are built from. ``device``: ``"cpu"`` or ``"gpu"``."""

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


def val_resize_size(resolution: int, crop_pct: float = 0.875) -> int:
    """Shorter side before the centre crop, as timm computes it."""
    return int(math.floor(resolution / crop_pct))


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
    """One batch of pipeline inputs: what DALI decodes and the draws it applies."""

    encoded: list[np.ndarray]
    labels: np.ndarray
    anchor: np.ndarray
    shape: np.ndarray
    flip: np.ndarray
    band: np.ndarray
    tag: np.ndarray  # (N, 2) int32: (epoch, step), read back from the outputs
    augment: RandAugmentParams

    def as_feed(self, with_augment: bool = True) -> tuple:
        """The external source's outputs; the RandAugment draws only when the graph uses them."""
        a = self.augment
        head = (self.encoded, self.labels, self.anchor, self.shape, self.flip, self.band)
        extra = (a.matrix, a.geometric, a.colour, a.value) if with_augment else ()
        return head + extra + (a.magnitude, self.tag)


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


# ----------------------------------------------------------------------------- graphs
def _decoder_args(cfg: PipelineConfig) -> dict:
    from nvidia.dali import types

    args = {"device": "mixed" if cfg.device == "gpu" else "cpu", "output_type": types.RGB,
            "adjust_orientation": False}  # sizes come from the file header, as PIL reports them
    if cfg.device == "gpu":
        args["hw_decoder_load"] = cfg.hw_decoder_load
    return args


def _train_graph(cfg: PipelineConfig, feed: Callable[[], tuple]):
    from nvidia.dali import fn

    from .dali_ops import apply_randaugment, lowpass, resize

    outputs = fn.external_source(source=feed, num_outputs=12 if cfg.randaugment else 8, batch=True)
    jpegs, labels, anchor, shape, flip, band = outputs[:6]
    magnitude, tag = outputs[-2:]
    img = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", normalized_anchor=False,
                                  normalized_shape=False,
                                  **_decoder_args(cfg))
    img = resize(img, size=(cfg.resolution, cfg.resolution), interpolation=cfg.interpolation)
    img = fn.flip(img, horizontal=flip)
    if cfg.randaugment:
        matrix, geometric, colour, value = outputs[6:10]
        img = apply_randaugment(img, matrix, geometric, colour, value, (cfg.resolution, cfg.resolution))
    img = lowpass(img, band, mode=cfg.lowpass, mean=cfg.mean, std=cfg.std, backend=cfg.fourier_backend)
    return img, labels, band, magnitude, tag


def _val_graph(cfg: PipelineConfig, feed: Callable[[], tuple]):
    from nvidia.dali import fn, types

    from .dali_ops import resize

    jpegs, labels = fn.external_source(source=feed, num_outputs=2, batch=True)
    img = fn.decoders.image(jpegs, **_decoder_args(cfg))
    img = resize(img, resize_shorter=val_resize_size(cfg.resolution, cfg.crop_pct), interpolation=cfg.interpolation)
    img = fn.crop_mirror_normalize(img, crop=(cfg.resolution, cfg.resolution), crop_pos_x=0.5, crop_pos_y=0.5,
                                   mean=list(cfg.mean), std=list(cfg.std), output_layout="CHW", dtype=types.FLOAT)
    return img, labels


def _build(graph, cfg: PipelineConfig, feed: Callable[[], tuple], conditionals: bool):
    from nvidia.dali import pipeline_def

    pipe = pipeline_def(graph, batch_size=cfg.batch_size, num_threads=cfg.num_threads,
                        device_id=cfg.device_id if cfg.device == "gpu" else None, seed=cfg.seed,
                        prefetch_queue_depth=cfg.prefetch, enable_conditionals=conditionals)(cfg, feed)
    pipe.build()
    return pipe


def build_train_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple]):
    """The training pipeline; ``feed()`` returns ``TrainBatch.as_feed(cfg.randaugment)`` in order and
    raises ``StopIteration`` at the end. Outputs: images, labels, band, magnitude, tag."""
    return _build(_train_graph, cfg, feed, conditionals=cfg.randaugment)


def build_val_pipeline(cfg: PipelineConfig, feed: Callable[[], tuple]):
    """The validation pipeline; ``feed()`` returns (encoded list, labels). Outputs: images, labels."""
    return _build(_val_graph, cfg, feed, conditionals=False)
