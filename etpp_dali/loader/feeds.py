"""What the DALI graphs are built from and fed: the config, and each batch's inputs and draws.

Everything random is drawn here, on the Python side, per batch, from a generator seeded by
(seed, epoch, batch, rank), and fed through ``fn.external_source`` together with the encoded
bytes: the crop windows (timm's RandomResizedCrop: scale 0.08-1, ratio 3/4-4/3, 10 attempts,
then a centre crop), the flips, the RandAugment draws (made at the stage's magnitude) and the
band. So band and magnitude change per iteration without a rebuild, every batch carries the
settings it was made with (no prefetch lag), and a resumed run draws the same numbers.

The external source's fields are named once (``TrainBatch.FEED``, ``ValBatch.FEED``,
``ECHO_FEED``) and the graphs (:mod:`etpp_dali.loader.graphs`) bind them by name.

Validation: the resized size and the crop's place are computed here, as torchvision's
``Resize(int)`` and ``CenterCrop`` compute them, and fed per sample, so the CPU and GPU graphs
crop the same pixels (DALI's own ``resize_shorter`` rounds the longer side where torchvision
truncates it, and its centre crop rounds half up where torchvision rounds half to even).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, LOWPASS_MODES
from etpp_dali.ops.fourier import BACKENDS
from etpp_dali.ops.randaugment import RandAugmentParams, sample_randaugment

__all__ = ["PipelineConfig", "INTERPOLATIONS", "TrainBatch", "ValBatch", "ECHO_FEED", "make_train_batch",
           "make_val_batch", "sample_crop_windows", "centre_crop_geometry", "val_resize_size"]

INTERPOLATIONS = ("cubic", "linear")
# the echo graph's feed: a training batch whose first field holds decoded images, not encoded bytes
ECHO_FEED = ("decoded",) + ("labels", "anchor", "shape", "flip", "band", "tag")


@dataclass
class PipelineConfig:
    """What the graphs are built from. ``device``: ``"cpu"`` or ``"gpu"``; ``device_id``: the CUDA
    device of a ``"gpu"`` graph (None: the current one), None for ``"cpu"``. ``read_files``: the
    graph reads the image files itself (``fn.io.file.read``, on DALI's threads), so the feed's
    ``encoded`` field holds each file's path as bytes; else it holds the encoded bytes."""

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
    read_files: bool = False
    mean: Sequence[float] = field(default_factory=lambda: list(IMAGENET_MEAN_255))
    std: Sequence[float] = field(default_factory=lambda: list(IMAGENET_STD_255))

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device = {self.device!r} is unknown; use 'cpu' or 'gpu'")
        if self.lowpass not in LOWPASS_MODES:
            raise ValueError(f"lowpass = {self.lowpass!r} is unknown; use one of {', '.join(LOWPASS_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation = {self.interpolation!r} is unknown; "
                             f"use one of {', '.join(INTERPOLATIONS)}")
        if self.resolution < 16:
            raise ValueError(f"resolution = {self.resolution} is too small; use at least 16")
        for name in ("batch_size", "num_threads", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} is invalid; use an integer >= 1")
        if self.fourier_backend not in BACKENDS:
            raise ValueError(f"fourier_backend = {self.fourier_backend!r} is unknown; use one of {', '.join(BACKENDS)}")
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
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
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
