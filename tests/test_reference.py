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


def test_reference_loader_runs_in_spawned_workers(tmp_path):
    """Workers started with spawn (the default on macOS, and from Python 3.14 on Linux) unpickle
    the transform: the guarded posterize must travel with it. At m = 10 about half of the
    posterize draws keep 0 bits, which Pillow 13 refuses without the guard."""
    import multiprocessing

    from etpp_dali.reference import ReferenceDataset

    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    ds = ReferenceDataset([(str(path), 0)] * 240, reference_transform(16, 8, 10))
    loader = torch.utils.data.DataLoader(ds, batch_size=60, num_workers=1,
                                         multiprocessing_context=multiprocessing.get_context("spawn"))
    shapes = [tuple(x.shape) for x, _ in loader]
    assert shapes == [(60, 3, 8, 8)] * 4
