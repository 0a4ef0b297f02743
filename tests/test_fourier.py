import numpy as np
import pytest
import torch

from etpp_dali.ops.fourier import (
    FourierCropper,
    _channel_vector,
    choose_backend,
    crop_matrices,
    fourier_crop,
    fourier_crop_reference,
)

BACKENDS = ("matmul", "fft")
SHAPES = [  # (N, C, H, W, bh, bw)
    (2, 3, 224, 224, 96, 96), (2, 3, 224, 224, 160, 160), (1, 3, 64, 64, 28, 28), (3, 3, 64, 48, 33, 20),
    (2, 1, 33, 40, 17, 8), (1, 2, 17, 17, 9, 9), (2, 3, 16, 20, 15, 19), (1, 3, 8, 10, 1, 2),
    (3, 3, 5, 7, 4, 7), (1, 3, 224, 224, 223, 1),
]


def rel_err(y, ref):
    return float(np.abs(np.asarray(y, dtype=np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_float64_and_float32(backend, shape):
    n, c, h, w, bh, bw = shape
    rng = np.random.default_rng(hash(shape) % 2**32)
    x = rng.standard_normal((n, c, h, w))
    ref = fourier_crop_reference(x, (bh, bw))
    y64 = fourier_crop(x, (bh, bw), backend=backend)
    assert y64.dtype == np.float64 and y64.shape == (n, c, bh, bw)
    assert rel_err(y64, ref) < 1e-10
    y32 = fourier_crop(torch.from_numpy(x.astype(np.float32)), (bh, bw), backend=backend)
    assert y32.dtype == torch.float32
    assert rel_err(y32.numpy(), fourier_crop_reference(x.astype(np.float32), (bh, bw))) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_nhwc_uint8_and_layout_conversion(backend):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    ref = fourier_crop_reference(x, (20, 24), layout="NHWC")
    y = fourier_crop(x, (20, 24), layout="NHWC", backend=backend)
    assert y.dtype == np.float32 and y.shape == (3, 20, 24, 3)
    assert rel_err(y, ref) < 1e-5
    y_chw = fourier_crop(torch.from_numpy(x), (20, 24), layout="NHWC", out_layout="NCHW", backend=backend)
    assert y_chw.shape == (3, 3, 20, 24)
    assert rel_err(y_chw.numpy(), np.moveaxis(ref, -1, 1)) < 1e-5


def test_full_size_returns_the_input():
    x = torch.randn(2, 3, 20, 30)
    assert torch.allclose(fourier_crop(x, (20, 30)), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keeps_each_channel_mean(backend):
    channel_scale = torch.tensor([1.0, 5.0, -3.0], dtype=torch.float64)[:, None, None]
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64) * channel_scale
    y = fourier_crop(x, 22, backend=backend)
    assert torch.allclose(y.mean(dim=(-1, -2)), x.mean(dim=(-1, -2)), atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_in_band_passes_and_above_band_is_removed(backend):
    h = w = 64
    b = 32
    rows = np.arange(h)[:, None] / h
    cols = np.arange(w)[None, :] / w
    out_r = np.arange(b)[:, None] / b
    out_c = np.arange(b)[None, :] / b
    inside = np.cos(2 * np.pi * (5 * rows + 3 * cols))        # 5 and 3 cycles: inside 32's band
    y = fourier_crop(inside[None, None], b, backend=backend)[0, 0]
    assert np.allclose(y, np.cos(2 * np.pi * (5 * out_r + 3 * out_c)), atol=1e-10)
    above = np.cos(2 * np.pi * (20 * rows)) + np.cos(2 * np.pi * (17 * cols))  # above 16 cycles
    assert np.abs(fourier_crop(above[None, None], b, backend=backend)).max() < 1e-10


def test_fused_normalisation_equals_normalise_then_crop():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 55.0, 50.0])
    y = FourierCropper()(x, 16, layout="NHWC", out_layout="NCHW", channel_scale=1 / std, channel_shift=-mean / std)
    normalised = (x.astype(np.float64) - mean) / std
    ref = np.moveaxis(fourier_crop_reference(normalised, 16, layout="NHWC"), -1, 1)
    assert rel_err(y.numpy(), ref) < 1e-5


@pytest.mark.parametrize("bh,bw", [(32, 20), (33, 20), (32, 21)])
def test_separable_form_of_the_docstring(bh, bw):
    """y = A_h x A_w^T - (v_h^T x v_w) u_h u_w^T, the last term only when both bands are even."""
    x = np.random.default_rng(7).standard_normal((64, 40))
    ah, vh = (t.numpy() if t is not None else None for t in crop_matrices(64, bh, torch.float64))
    aw, vw = (t.numpy() if t is not None else None for t in crop_matrices(40, bw, torch.float64))
    assert (vh is None) == (bh % 2 == 1) and (vw is None) == (bw % 2 == 1)
    y = ah @ x @ aw.T
    if vh is not None and vw is not None:
        y -= (vh @ x @ vw) * np.outer((-1.0) ** np.arange(bh), (-1.0) ** np.arange(bw))
    assert np.abs(y - fourier_crop_reference(x[None, None], (bh, bw))[0, 0]).max() < 1e-12


def test_channel_scale_and_shift_are_made_once_per_device_and_dtype():
    crop = FourierCropper("matmul")
    x = torch.rand(2, 3, 16, 16)
    crop(x, 8, channel_scale=[2.0, 3.0, 4.0], channel_shift=np.array([1.0, 0.0, -1.0]))
    before = _channel_vector.cache_info()
    y = crop(x, 8, channel_scale=[2.0, 3.0, 4.0], channel_shift=np.array([1.0, 0.0, -1.0]))
    after = _channel_vector.cache_info()
    assert after.hits == before.hits + 2 and after.misses == before.misses
    scale, shift = torch.tensor([2.0, 3.0, 4.0])[:, None, None], torch.tensor([1.0, 0.0, -1.0])[:, None, None]
    ref = fourier_crop(x, 8) * scale + shift
    assert torch.allclose(y, ref, atol=1e-5)
    y64 = crop(x.double(), 8, channel_scale=[2.0, 3.0, 4.0])
    assert y64.dtype == torch.float64 and torch.allclose(y64, (fourier_crop(x.double(), 8) * 2 * torch.tensor(
        [1.0, 1.5, 2.0], dtype=torch.float64)[:, None, None]))


def test_cropper_reuses_its_buffers_and_handles_size_changes():
    crop = FourierCropper("matmul")
    x = torch.randn(8, 3, 32, 32)
    first = crop(x, 16).clone()
    ptr = crop._buffers["y"].data_ptr()
    assert torch.equal(crop(x, 16), first)
    assert crop._buffers["y"].data_ptr() == ptr  # no new allocation for the same shape
    assert crop(x[:3], 10).shape == (3, 3, 10, 10)  # smaller requests reuse the same buffers
    assert crop(torch.randn(9, 3, 40, 40), 20).shape == (9, 3, 20, 20)


def test_backend_rule():
    assert choose_backend((224, 224), (96, 96)) == "matmul"
    assert choose_backend((224, 224), (128, 128)) == "matmul"
    assert choose_backend((224, 224), (160, 160)) == "fft"
    assert choose_backend((224, 224), (192, 192)) == "fft"
    assert choose_backend((64, 64), (56, 56)) == "matmul"
    assert choose_backend((224, 224), (96, 96), "cuda") == "fft"


@pytest.mark.parametrize("call,needle", [
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 9), "size = 9"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 0), "size = 0"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), (4, 12)), "size = (4, 12)"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 2.5), "size = 2.5"),
    (lambda: fourier_crop(torch.zeros(3, 8, 8), 4), "3 dimensions"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 4, layout="CHW"), "layout = 'CHW'"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 4, out_layout="HWCN"), "out_layout = 'HWCN'"),
    (lambda: fourier_crop(torch.zeros(1, 3, 8, 8), 4, backend="dct"), "backend = 'dct'"),
    (lambda: fourier_crop([[1, 2]], 1), "images is a list"),
])
def test_bad_input_names_the_argument(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    assert needle in str(info.value)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_matches_reference(backend):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    y = fourier_crop(torch.from_numpy(x).cuda(), 96, backend=backend)
    assert y.is_cuda
    assert rel_err(y.cpu().numpy(), fourier_crop_reference(x, 96)) < 1e-5


@pytest.mark.gpu
def test_cuda_auto_backend_is_exact_even_with_tf32_on():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        x = np.random.default_rng(12).standard_normal((2, 3, 224, 224)).astype(np.float32)
        y = fourier_crop(torch.from_numpy(x).cuda(), 160)
        assert rel_err(y.cpu().numpy(), fourier_crop_reference(x, 160)) < 1e-5
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old

