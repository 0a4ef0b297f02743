"""The ops wing: what the pipelines do to each image.

The exact low-frequency (Fourier) crop in NumPy/torch, RandAugment's op table and its seeded
draws (timm's ``rand-m{m}-mstd0.5-inc1``), the DALI operators built on them (crop, resize, warp,
RandAugment on CPU and GPU data), random erasing on a batch, and HOG features (the MAE target).
"""

from etpp_dali.util.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "fourier_crop": "fourier",
    "FourierCropper": "fourier",
    "fourier_crop_reference": "fourier",
    "RandAugmentParams": "randaugment",
    "sample_randaugment": "randaugment",
    "RandomErasing": "erasing",
    "hog_cells": "hog",
    "hog_patch_targets": "hog",
})
