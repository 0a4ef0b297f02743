"""Histograms of oriented gradients on a batch of images, the reconstruction target of MaskFeat
and of the MAE row of EfficientTrain++ that uses HOG.

The parameters are MaskFeat's: 9 unsigned orientation bins over 0-180 degrees, cells of 8 x 8
pixels, each channel on its own, and every cell's histogram L2-normalised. The arithmetic is
scikit-image's ``hog(channel, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
block_norm="L2")`` on each channel, so that function is the reference the tests hold this one to:
central differences (zero on the border rows and columns), the angle of ``atan2`` taken modulo
180 degrees and binned without interpolation, the magnitudes averaged over each whole cell, and
``h / sqrt(sum(h^2) + eps^2)`` with ``eps = 1e-5``. Pixels past the last whole cell are left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["HOG_CELL", "HOG_EPS", "HOG_ORIENTATIONS", "hog_cells", "hog_patch_targets"]

HOG_ORIENTATIONS = 9
HOG_CELL = 8
HOG_EPS = 1e-5


def hog_cells(images: torch.Tensor, orientations: int = HOG_ORIENTATIONS, cell: int = HOG_CELL,
              eps: float = HOG_EPS) -> torch.Tensor:
    """The per-channel HOG of ``images`` (N, C, H, W): a tensor (N, C, H // cell, W // cell,
    orientations), each cell's histogram L2-normalised."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), not {tuple(images.shape)}")
    x = images.float() if not images.is_floating_point() else images
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
    g_col[..., :, 1:-1] = x[..., :, 2:] - x[..., :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.rad2deg(torch.atan2(g_row, g_col)) % 180.0
    edges = torch.arange(1, orientations, dtype=x.dtype, device=x.device) * (180.0 / orientations)
    bins = torch.bucketize(angle.contiguous(), edges, right=True)  # bin i holds edges[i-1] <= angle < edges[i]
    n, c, h, w = x.shape
    rows, cols = h // cell * cell, w // cell * cell
    magnitude, bins = magnitude[..., :rows, :cols], bins[..., :rows, :cols]
    # one orientation at a time: a (N, C, O, H, W) one-hot would hold O copies of the batch
    hist = torch.stack([F.avg_pool2d(magnitude * (bins == i), cell) for i in range(orientations)], dim=-1)
    return hist / torch.sqrt((hist * hist).sum(dim=-1, keepdim=True) + eps * eps)


def hog_patch_targets(images: torch.Tensor, patch: int, orientations: int = HOG_ORIENTATIONS,
                      cell: int = HOG_CELL) -> torch.Tensor:
    """The HOG target of each ``patch`` x ``patch`` patch of ``images`` (N, C, H, W), in the
    patches' row-major order: (N, H/patch * W/patch, (patch/cell)^2 * C * orientations)."""
    if patch % cell:
        raise ValueError(f"patch {patch} is not a multiple of the HOG cell {cell}")
    hist = hog_cells(images, orientations, cell)
    n, c, gh, gw, o = hist.shape
    k = patch // cell
    hist = hist.reshape(n, c, gh // k, k, gw // k, k, o).permute(0, 2, 4, 3, 5, 1, 6)
    return hist.reshape(n, (gh // k) * (gw // k), k * k * c * o)
