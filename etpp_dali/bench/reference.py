"""The EfficientTrain++ reference CPU loader, for side-by-side benchmarks.

What the reference code does: a torch ``DataLoader`` with worker
processes, timm's ``create_transform`` at the full resolution R with
``rand-m{m}-mstd0.5-inc1`` and bicubic interpolation, then a Lanczos resize to the band B in
place of the Fourier crop, then ``ToTensor`` and normalisation.

Pillow 13 guard: timm's increasing posterize asks for 0 bits at the top magnitudes
(``4 - int(m * 4 / 10)`` with m up to 10 after the magnitude noise); Pillow 12 returned a black
image there and Pillow 13 raises ``ValueError``. :func:`install_posterize_guard` restores the
Pillow 12 result, so the reference runs unchanged on either version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torch.utils.data import DataLoader
from torchvision import transforms

__all__ = ["ReferenceDataset", "guarded_posterize", "install_posterize_guard", "reference_loader",
           "reference_transform"]

_GUARDED = False


def guarded_posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize (``ImageOps.posterize`` below 8 bits), with 0 bits giving black as Pillow
    12 did. A module-level function, so transforms that hold it pickle into spawned workers."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked away: black
    return ImageOps.posterize(img, bits_to_keep)


def install_posterize_guard() -> None:
    """Make timm's posterize accept 0 bits (all black, as Pillow < 13 did); transforms built
    afterwards use :func:`guarded_posterize`."""
    global _GUARDED
    if _GUARDED:
        return
    auto_augment.posterize = guarded_posterize
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = guarded_posterize
    _GUARDED = True


def reference_transform(resolution: int, band: int, magnitude: float,
                        mean: Sequence[float] = (0.485, 0.456, 0.406),
                        std: Sequence[float] = (0.229, 0.224, 0.225)) -> Any:
    """timm's training transform at R with RandAugment, a Lanczos resize to B, then tensors."""
    install_posterize_guard()
    timm_tf = create_transform(resolution, is_training=True, auto_augment=f"rand-m{magnitude:g}-mstd0.5-inc1",
                               interpolation="bicubic", re_prob=0.0, mean=mean, std=std,
                               separate=True)
    primary, secondary, final = timm_tf  # (RRC + flip), (RandAugment), (ToTensor + Normalize)
    steps = list(primary.transforms) + list(secondary.transforms)
    if band != resolution:
        steps.append(transforms.Resize((band, band), interpolation=Image.LANCZOS))
    steps += list(final.transforms)
    return transforms.Compose(steps)


class ReferenceDataset:
    """(path, label) pairs read with PIL, as torchvision's ImageFolder does. ``transform`` may be
    set later (timm's ``create_loader`` sets its own)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), label


def reference_loader(samples: Sequence[tuple[str | Path, int]], *, resolution: int, band: int,
                     magnitude: float, batch_size: int, workers: int, seed: int = 0,
                     pin_memory: bool = False) -> Any:
    """The reference ``DataLoader`` (shuffled, ``workers`` processes, persistent; pinned batches
    with ``pin_memory``, for a copy to a GPU)."""
    ds = ReferenceDataset([(str(p), int(y)) for p, y in samples],
                          reference_transform(resolution, band, magnitude))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, generator=gen, pin_memory=pin_memory)
