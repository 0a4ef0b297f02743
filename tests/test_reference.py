import multiprocessing
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as aa
from timm.data.auto_augment import AugmentOp

from etpp_dali.bench.reference import ReferenceDataset, install_posterize_guard, reference_transform


def test_posterize_guard_gives_black_for_zero_bits():
    install_posterize_guard()
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    assert np.asarray(aa.NAME_TO_OP["PosterizeIncreasing"](img, 0)).max() == 0
    assert np.asarray(aa.NAME_TO_OP["PosterizeIncreasing"](img, 1)).max() == 128


def _posterize_bits_seen(tf) -> list[int]:
    """Wrap the transform's posterize ops so that the bits each call keeps are recorded."""
    seen = []
    ops = [t for t in tf.transforms if hasattr(t, "ops")][0].ops  # timm's RandAugment
    for op in ops:
        if isinstance(op, AugmentOp) and op.name.startswith("Posterize"):
            def recording(img, bits, _fn=op.aug_fn, **kw):
                seen.append(bits)
                return _fn(img, bits, **kw)
            op.aug_fn = recording
    return seen


@pytest.mark.parametrize("band", [16, 32])
def test_reference_transform_shape_and_the_0_bit_posterize(band):
    """At m = 10 about half of the posterize draws keep 0 bits (Pillow 13 raises on that without
    the guard): the case is reached and the output is still a proper tensor."""
    tf = reference_transform(32, band, 10)
    seen = _posterize_bits_seen(tf)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    torch.manual_seed(0)
    random.seed(0)
    for _ in range(200):
        x = tf(img)
        assert x.shape == (3, band, band) and x.dtype == torch.float32
    assert 0 in seen, f"the 0-bit posterize was never drawn (bits seen: {sorted(set(seen))})"


def test_reference_loader_runs_in_spawned_workers(tmp_path):
    """Workers started with spawn (the default on macOS, and from Python 3.14 on Linux) unpickle
    the transform: the guarded posterize must travel with it. At m = 10 about half of the
    posterize draws keep 0 bits, which Pillow 13 refuses without the guard."""

    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
    ds = ReferenceDataset([(str(path), 0)] * 240, reference_transform(16, 8, 10))
    loader = torch.utils.data.DataLoader(ds, batch_size=60, num_workers=1,
                                         multiprocessing_context=multiprocessing.get_context("spawn"))
    shapes = [tuple(x.shape) for x, _ in loader]
    assert shapes == [(60, 3, 8, 8)] * 4
