"""Random erasing on a batch, as timm's ``RandomErasing(mode="pixel")`` (the reference recipes' ``reprob``).

Per sample, with probability ``probability``: up to 10 attempts of a rectangle of area
U(0.02, 1/3) of the image and log-uniform aspect ratio in (0.3, 1/0.3), ``h = round(sqrt(area *
aspect))``, ``w = round(sqrt(area / aspect))``; the first with ``h < H`` and ``w < W`` is placed
uniformly and filled with per-pixel N(0, 1) noise (the images are normalised, so that is noise
of the data's own scale); a sample whose 10 attempts all miss is left alone, as in timm.

The rectangles are drawn with NumPy from a seeded generator (one per batch in the loader, so a
resumed run draws the same ones), and the noise from a torch generator seeded by that same
generator, on the images' device. The loader applies it after the low-frequency crop, at the
band: the rectangles are the same fractions of the image as at full size, the noise is white
at the band's pixel grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ErasingBoxes", "RandomErasing", "sample_erasing", "apply_erasing"]


@dataclass(frozen=True)
class ErasingBoxes:
    """One batch's draws: per sample whether it is erased and its rectangle (pixels), plus the noise seed."""

    erase: np.ndarray   # (N,) bool
    top: np.ndarray     # (N,) int64
    left: np.ndarray    # (N,) int64
    height: np.ndarray  # (N,) int64; 0 where not erased
    width: np.ndarray   # (N,) int64; 0 where not erased
    noise_seed: int

    def erased_pixels(self) -> int:
        """Pixels erased per channel, over the batch."""
        return int(np.sum(self.height * self.width))


def sample_erasing(rng: np.random.Generator, n: int, height: int, width: int, probability: float,
                   area: tuple[float, float] = (0.02, 1 / 3), min_aspect: float = 0.3,
                   attempts: int = 10) -> ErasingBoxes:
    """timm's per-sample draws for ``n`` images of ``height`` x ``width``, vectorised (one count)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"random erasing probability = {probability} is outside 0..1")
    if not 0.0 < area[0] <= area[1] <= 1.0:
        raise ValueError(f"random erasing area = {area} must satisfy 0 < min <= max <= 1")
    chosen = rng.random(n) < probability
    target = rng.uniform(area[0], area[1], size=(n, attempts)) * (height * width)
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    aspect = np.exp(rng.uniform(*log_aspect, size=(n, attempts)))
    h = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # rint: Python's round(), half to even
    w = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (h < height) & (w < width)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    erase = chosen & fits[rows, first]
    h, w = np.where(erase, h[rows, first], 0), np.where(erase, w[rows, first], 0)
    u = rng.random((n, 2))  # randint(0, H - h) and randint(0, W - w), both ends included
    top = np.floor(u[:, 0] * (height - h + 1)).astype(np.int64)
    left = np.floor(u[:, 1] * (width - w + 1)).astype(np.int64)
    return ErasingBoxes(erase, top, left, h, w, int(rng.integers(2**63 - 1)))


def _box_mask(boxes: ErasingBoxes, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(N, 1, H, W) bool: True inside each sample's rectangle."""
    def span(start: np.ndarray, length: np.ndarray, size: int) -> torch.Tensor:
        lo = torch.as_tensor(start, device=device)[:, None]
        hi = lo + torch.as_tensor(length, device=device)[:, None]
        pos = torch.arange(size, device=device)[None, :]
        return (pos >= lo) & (pos < hi)

    rows, cols = span(boxes.top, boxes.height, height), span(boxes.left, boxes.width, width)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def apply_erasing(images: torch.Tensor, boxes: ErasingBoxes) -> torch.Tensor:
    """Fill ``boxes`` of ``images`` (N x C x H x W, normalised) with N(0, 1) noise, in place.

    Only the erased pixels are drawn (about 4% of a batch at probability 0.25), in one call on
    the images' device, from a generator seeded by ``boxes.noise_seed``.
    """
    if images.dim() != 4 or len(images) != len(boxes.erase):
        raise ValueError(f"random erasing wants N x C x H x W images for {len(boxes.erase)} samples, "
                         f"got shape {tuple(images.shape)}")
    count = boxes.erased_pixels() * images.shape[1]
    if count == 0:
        return images
    n, c, h, w = images.shape
    mask = _box_mask(boxes, h, w, images.device).expand(n, c, h, w)
    gen = torch.Generator(device=images.device).manual_seed(boxes.noise_seed)
    noise = torch.randn(count, generator=gen, device=images.device, dtype=images.dtype)
    return images.masked_scatter_(mask, noise)


class RandomErasing:
    """timm's ``RandomErasing(probability, mode="pixel")`` for batches: ``erasing(images, rng)``.

    ``rng`` is a ``np.random.Generator`` (the loader seeds one per batch); the draws and so the
    result depend only on it, on every device.
    """

    def __init__(self, probability: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
                 min_aspect: float = 0.3) -> None:
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"random erasing min_aspect = {min_aspect} must be in (0, 1]")
        sample_erasing(np.random.default_rng(0), 1, 8, 8, probability, area)  # checks the arguments
        self.probability = probability
        self.area = area
        self.min_aspect = min_aspect

    def sample(self, rng: np.random.Generator, n: int, height: int, width: int) -> ErasingBoxes:
        return sample_erasing(rng, n, height, width, self.probability, self.area, self.min_aspect)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Erase in place and return ``images`` (N x C x H x W)."""
        return apply_erasing(images, self.sample(rng, len(images), images.shape[-2], images.shape[-1]))

    def __repr__(self) -> str:
        return f"RandomErasing(probability={self.probability}, mode='pixel', area={self.area})"
