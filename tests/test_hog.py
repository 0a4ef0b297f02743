"""The HOG target against scikit-image's hog, the reference implementation."""

import numpy as np
import pytest
import torch
from PIL import Image

from etpp_dali.ops.hog import HOG_CELL, HOG_ORIENTATIONS, hog_cells, hog_patch_targets

skimage_feature = pytest.importorskip("skimage.feature")


def reference(channel: np.ndarray) -> np.ndarray:
    """scikit-image's HOG of one channel with this project's parameters: (rows, cols, 9)."""
    out = skimage_feature.hog(channel, orientations=HOG_ORIENTATIONS, pixels_per_cell=(HOG_CELL, HOG_CELL),
                              cells_per_block=(1, 1), block_norm="L2", feature_vector=False)
    return out.reshape(out.shape[0], out.shape[1], HOG_ORIENTATIONS)


def images(demo_root):
    """Noise of odd sizes, a flat image with one edge, and two demo photos: (C, H, W) float64 arrays."""
    rng = np.random.default_rng(0)
    edge = np.zeros((3, 32, 40))
    edge[:, :, 17:] = 200.0
    photos = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).transpose(2, 0, 1)
              for p in sorted((demo_root / "train").rglob("*.jpg"))[:2]]
    return [rng.integers(0, 256, (3, 37, 45)).astype(np.float64), rng.random((3, 24, 24)), edge, *photos]


def test_hog_matches_scikit_image_on_every_channel(demo_root):
    for img in images(demo_root):
        ours64 = hog_cells(torch.from_numpy(img)[None])[0]
        ours32 = hog_cells(torch.from_numpy(img).float()[None])[0]
        assert ours64.shape == (3, img.shape[1] // 8, img.shape[2] // 8, 9)
        for c in range(3):
            ref = reference(img[c])
            np.testing.assert_allclose(ours64[c].numpy(), ref, atol=1e-6)  # scikit-image sums in float32
            np.testing.assert_allclose(ours32[c].double().numpy(), ref, atol=1e-4)


def test_each_cell_is_l2_normalised_and_an_edge_falls_in_its_bin():
    img = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    img[..., 9:] = 1.0  # a vertical edge in columns 8-9: horizontal gradient, angle 0 -> bin 0
    cells = hog_cells(img)
    assert cells.shape == (1, 1, 2, 2, 9)
    edge, flat = cells[0, 0, :, 1], cells[0, 0, :, 0]
    assert torch.allclose(edge.norm(dim=-1), torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert (edge[:, 0] > 0.99).all() and edge[:, 1:].abs().max() < 1e-6
    assert flat.abs().max() == 0  # no gradient: an empty histogram stays empty (eps keeps it finite)


def test_patch_targets_group_each_patch_cells_and_channels():
    img = torch.rand(2, 3, 32, 48, dtype=torch.float64)
    cells = hog_cells(img)  # (2, 3, 4, 6, 9)
    targets = hog_patch_targets(img, patch=16)
    assert targets.shape == (2, 2 * 3, 2 * 2 * 3 * 9)
    # patch (row 1, col 2) is token 1 * 3 + 2; its cells are rows 2-3, columns 4-5
    expected = cells[1, :, 2:4, 4:6].permute(1, 2, 0, 3).reshape(-1)
    assert torch.equal(targets[1, 5], expected)
    with pytest.raises(ValueError, match="multiple of the HOG cell"):
        hog_patch_targets(img, patch=12)
