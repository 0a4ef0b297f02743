import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop

from etpp_dali.pipeline import PipelineConfig, sample_crop_windows, val_resize_size


def test_crop_windows_fit_and_follow_torchvision_statistics():
    rng = np.random.default_rng(0)
    sizes = np.tile([[375, 500]], (4000, 1))
    anchor, shape = sample_crop_windows(rng, sizes)
    y, x, h, w = anchor[:, 0], anchor[:, 1], shape[:, 0], shape[:, 1]
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 375).all() and (x + w <= 500).all()
    frac = h * w / (375 * 500)
    ratio = w / h
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35
    torch.manual_seed(0)
    ref = np.array([RandomResizedCrop.get_params(torch.empty(3, 375, 500), (0.08, 1.0), (3 / 4, 4 / 3))
                    for _ in range(4000)], dtype=np.float64)
    ref_frac = ref[:, 2] * ref[:, 3] / (375 * 500)
    assert frac.mean() == pytest.approx(ref_frac.mean(), abs=0.02)
    assert (w / 500).mean() == pytest.approx((ref[:, 3] / 500).mean(), abs=0.02)
    assert (x / np.maximum(500 - w, 1)).mean() == pytest.approx(0.5, abs=0.03)  # uniform placement


def test_crop_window_fallback_is_a_clamped_centre_crop():
    rng = np.random.default_rng(1)
    anchor, shape = sample_crop_windows(rng, np.array([[10, 1000]]), scale=(0.99, 1.0))
    h, w = shape[0]
    assert h == 10 and w == round(10 * 4 / 3)
    assert anchor[0, 1] == (1000 - w) // 2


def test_crop_windows_are_deterministic():
    sizes = np.array([[300, 400], [50, 60]])
    a = sample_crop_windows(np.random.default_rng(5), sizes)
    b = sample_crop_windows(np.random.default_rng(5), sizes)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_config_validation_and_val_size():
    assert val_resize_size(224) == 256 and val_resize_size(64) == 73
    for kwargs, needle in (({"device": "tpu"}, "device = 'tpu'"), ({"lowpass": "blur"}, "lowpass = 'blur'"),
                           ({"interpolation": "nearest"}, "interpolation = 'nearest'"),
                           ({"resolution": 8}, "resolution = 8"), ({"hw_decoder_load": 2.0}, "hw_decoder_load")):
        with pytest.raises(ValueError, match=needle):
            PipelineConfig(**kwargs)
