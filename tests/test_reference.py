import numpy as np
import pytest
import torch
from PIL import Image

from etpp_dali.reference import install_posterize_guard, reference_transform


def test_posterize_guard_gives_black_for_zero_bits():
    from timm.data import auto_augment as aa

    install_posterize_guard()
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(aa.NAME_TO_OP["PosterizeIncreasing"](img, 0)).max() == 0
    assert np.asarray(aa.NAME_TO_OP["PosterizeIncreasing"](img, 1)).max() == 128


@pytest.mark.parametrize("band", [16, 32])
def test_reference_transform_shape(band):
    tf = reference_transform(32, band, 9)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for _ in range(20):  # m = 9 with noise reaches the 0-bit posterize now and then
        x = tf(img)
        assert x.shape == (3, band, band) and x.dtype == torch.float32
