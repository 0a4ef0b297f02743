"""The low-frequency crop ("Fourier crop") of EfficientTrain++.

For an image x of H x W and a band (Bh, Bw) (Bh <= H, Bw <= W), the operator is::

    X = fft2(x)                                   # unnormalised
    Z = X[K(Bh)][:, K(Bw)]                        # K(B) = fftfreq(B) * B: -floor(B/2) .. ceil(B/2)-1
    y = real(ifft2(Z)) * (Bh / H) * (Bw / W)      # the scale keeps each channel's mean

i.e. the centred Bh x Bw block of the shifted spectrum; unshifted, for even B, rows (and
columns) [0, B/2) and [H - B/2, H). The output is Bh x Bw. For even B the block holds the
unpaired Nyquist frequency -B/2 and, as EfficientTrain++'s reference, we take the real part:
both backends reproduce that exactly (no other Nyquist treatment), within float rounding of
:func:`fourier_crop_reference`. The operator is linear and keeps each channel's mean, so a
normalisation before or after it gives the same result.

The operator is separable: ``y = Re(M_h x M_w^T)`` with the complex ``B x H`` matrix
``M = (1/H) E_B^+ E_H^-`` (``E^+_{jk} = exp(2 pi i k j / B)``, ``E^-_{kh} = exp(-2 pi i k h / H)``,
``k`` in ``K(B)``). Write ``A = Re(M)``, ``Ai = Im(M)``; then ``y = A_h x A_w^T - Ai_h x Ai_w^T``.
For even B, ``Ai = u v^T`` is rank one (``u_j = (-1)^j``, ``v_h = sin(pi B h / H) / H``: the
unpaired Nyquist bin); for odd B it is zero. Hence

    y = A_h x A_w^T - s u_h u_w^T,    s = v_h^T x v_w  (only when both bands are even)

Backends (both tested against :func:`fourier_crop_reference`):

``matmul``
    Two real GEMMs and the rank-one term: ``Bh H W + Bh W Bw`` multiply-adds per channel, run
    on chunks of images small enough to stay in cache. (Folding A by its reflection symmetry
    halves the multiply-adds but its extra passes over memory cost more than that inside a
    DALI pipeline: measured and dropped.)
``fft``
    ``A`` is also ``(1/H) E_B^+ P E_H^-`` where ``P`` keeps the bins of ``K(B)`` and puts the
    average of bins ``+B/2`` and ``-B/2`` at the Nyquist position: a complex-linear operator.
    So two real planes ``a``, ``b`` are packed as one complex plane ``a + i b``; one complex FFT
    along W, the kept columns, an FFT along H, the kept rows and an inverse ``Bh x Bw`` FFT give
    ``A_h a A_w^T + i A_h b A_w^T``; ``s`` comes from the same W-spectrum (bins ``+-Bw/2``).
    About ``2.5 H W log2(HW)`` operations per channel: far fewer than the GEMMs at wide bands.

``backend="auto"`` applies :func:`choose_backend`, a rule measured with ``etpp bench op``.
:class:`FourierCropper` keeps its work buffers between calls: fresh multi-megabyte tensors cost
page faults comparable to the arithmetic itself, so the data pipeline uses one.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["BACKENDS", "LAYOUTS", "FourierCropper", "choose_backend", "crop_matrices",
           "fourier_crop", "fourier_crop_reference"]

BACKENDS = ("auto", "matmul", "fft")
LAYOUTS = ("NCHW", "NHWC")

Alloc = Callable[[str, tuple, torch.dtype, torch.device], torch.Tensor]


# ---------------------------------------------------------------------------- reference
def fourier_crop_reference(images: np.ndarray, size: int | Sequence[int], layout: str = "NCHW") -> np.ndarray:
    """The defining formula (module docstring) in float64 NumPy: the ground truth of the tests."""
    x = np.asarray(images, dtype=np.float64)
    if layout == "NHWC":
        x = np.moveaxis(x, -1, 1)
    bh, bw = _pair(size)
    h, w = x.shape[-2:]
    spectrum = np.fft.fft2(x, axes=(-2, -1))
    block = spectrum[..., _freqs(bh) % h, :][..., _freqs(bw) % w]
    y = np.fft.ifft2(block, axes=(-2, -1)).real * (bh / h) * (bw / w)
    return np.moveaxis(y, 1, -1) if layout == "NHWC" else y


def _freqs(n: int) -> np.ndarray:
    """K(n): the DFT frequencies of an n-point signal in FFT order."""
    return (np.fft.fftfreq(n) * n).round().astype(np.int64)


# ----------------------------------------------------------------------------- matrices
@functools.lru_cache(maxsize=64)
def _axis_matrices_f64(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``A`` (n_out x n_in) and, for an even band below the input, the Nyquist vector ``v``."""
    k = _freqs(n_out)
    m = (np.exp(2j * np.pi * np.outer(np.arange(n_out), k) / n_out)
         @ np.exp(-2j * np.pi * np.outer(k, np.arange(n_in)) / n_in)) / n_in
    if n_out % 2 == 0 and n_out < n_in:
        return m.real.copy(), m.imag[0].copy()  # u_0 = 1, so row 0 of Im(M) is v
    return m.real.copy(), None  # odd bands are symmetric; a full band is the identity


@functools.lru_cache(maxsize=128)
def crop_matrices(n_in: int, n_out: int, dtype: torch.dtype = torch.float32,
                  device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(A, v)`` for one axis, cached per (size, band, dtype, device).

    ``A`` is ``n_out x n_in``; ``v`` (``n_in``) is None unless the band is even and smaller
    than the input (``u = (-1)^j`` is implied).
    """
    a, v = _axis_matrices_f64(n_in, n_out)
    A = torch.as_tensor(a, dtype=dtype, device=device)
    return A, (None if v is None else torch.as_tensor(v, dtype=dtype, device=device))


@functools.lru_cache(maxsize=64)
def _nyquist_outer(bh: int, bw: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.as_tensor(np.outer((-1.0) ** np.arange(bh), (-1.0) ** np.arange(bw)), dtype=dtype, device=device)


# -------------------------------------------------------------------------------- kernels
_CHUNK_BYTES = 8 << 20  # float input per chunk of the matmul kernel (see below)

# Each kernel takes images ``x`` of shape (N, C, H, W) (float or uint8, any strides, e.g. a
# permuted NHWC batch) and writes ``y`` (N, C, Bh, Bw) = crop(x) in the float dtype of ``y``.
def _matmul_kernel(x: torch.Tensor, y: torch.Tensor, alloc: Alloc) -> None:
    n, c, h, w = x.shape
    bh, bw = y.shape[-2:]
    dev = str(y.device)
    ah, vh = crop_matrices(h, bh, y.dtype, dev)
    aw, vw = crop_matrices(w, bw, y.dtype, dev)
    # in chunks of images whose float copy stays in cache (the batch's would not)
    chunk = max(1, _CHUNK_BYTES // (c * h * w * y.element_size()))
    for start in range(0, n, chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        k = xs.shape[0]
        if xs.dtype != y.dtype or not xs.is_contiguous():
            xf = alloc("x", (k, c, h, w), y.dtype, y.device)
            xf.copy_(xs)  # one pass: type conversion and layout change together
            xs = xf
        # contract H first (a batched GEMM), then W in one large GEMM
        t = alloc("t", (k, c, bh, w), y.dtype, y.device)
        torch.matmul(ah, xs, out=t)
        torch.matmul(t.view(k * c * bh, w), aw.T, out=ys.view(k * c * bh, bw))
        if vh is not None and vw is not None:
            s = torch.matmul(torch.matmul(xs, vw), vh)       # (k, C) = v_h^T x v_w
            ys.sub_(s[..., None, None] * _nyquist_outer(bh, bw, y.dtype, dev))


def _fft_kernel(x: torch.Tensor, y: torch.Tensor, alloc: Alloc) -> None:
    n, c, h, w = x.shape
    bh, bw = y.shape[-2:]
    cdtype = torch.complex64 if y.dtype == torch.float32 else torch.complex128
    dev = y.device
    p = (n + 1) // 2  # image i and image p + i travel together as a + i b
    z = alloc("z", (p, c, h, w), cdtype, dev)
    zr = torch.view_as_real(z)
    zr[..., 0].copy_(x[:p])
    zr[: n - p, ..., 1].copy_(x[p:])
    if n % 2:
        zr[n - p:, ..., 1].zero_()
    spec_w = alloc("zw", (p, c, h, w), cdtype, dev)
    torch.fft.fft(z, dim=-1, out=spec_w)
    # kept columns K(Bw), transposed so that the H transform runs over contiguous rows
    cols = alloc("cols", (p, c, bw, h), cdtype, dev)
    lo = (bw + 1) // 2
    cols[..., :lo, :].copy_(spec_w[..., :lo].transpose(-1, -2))
    cols[..., lo:, :].copy_(spec_w[..., w - (bw - lo):].transpose(-1, -2))
    even_w = bw % 2 == 0 and bw < w
    if even_w:
        plus = spec_w[..., bw // 2]                        # bin +Bw/2 of every row
        rows_v = (cols[..., bw // 2, :] - plus) / (2j * w)  # x v_w, complex-linear in (a, b)
        cols[..., bw // 2, :].add_(plus).mul_(0.5)          # Nyquist: average of bins -Bw/2, +Bw/2
    spec_h = alloc("zh", (p, c, bw, h), cdtype, dev)
    torch.fft.fft(cols, dim=-1, out=spec_h)
    block = alloc("blk", (p, c, bw, bh), cdtype, dev)
    lo = (bh + 1) // 2
    block[..., :lo].copy_(spec_h[..., :lo])
    block[..., lo:].copy_(spec_h[..., h - (bh - lo):])
    even_h = bh % 2 == 0 and bh < h
    if even_h:
        block[..., bh // 2].add_(spec_h[..., bh // 2]).mul_(0.5)
    out = alloc("out_c", (p, c, bw, bh), cdtype, dev)
    torch.fft.ifft2(block, norm="forward", out=out)        # the unnormalised inverse
    scale = 1.0 / (h * w)                                   # (Bh/H)(Bw/W) / (Bh Bw)
    if even_h and even_w:
        _, vh = crop_matrices(h, bh, y.dtype, str(dev))
        s = torch.matmul(rows_v, vh.to(cdtype))             # (P, C) = v_h^T (a + i b) v_w
        out.sub_((s / scale)[..., None, None] * _nyquist_outer(bw, bh, y.dtype, str(dev)))
    parts = torch.view_as_real(out)                         # transposed (Bw, Bh) planes
    torch.mul(parts[..., 0].transpose(-1, -2), scale, out=y[:p])
    if n - p:
        torch.mul(parts[: n - p, ..., 1].transpose(-1, -2), scale, out=y[p:])


_KERNELS = {"matmul": _matmul_kernel, "fft": _fft_kernel}


# ------------------------------------------------------------------------------- choosing
# Why this rule. On the CPU the GEMMs do ``Bh H W + Bh W Bw`` multiply-adds per channel, which
# grows with the band, while the FFT's work hardly depends on it: alone and inside the DALI CPU
# pipeline the GEMMs won at small bands and the FFT from about 0.6 of the side (the comparisons:
# bench/op.sh and bench/crop.sh, recorded in bench/results/op-cpu-*.md and crop-cpu-*.md). Small
# inputs keep the GEMMs' matrices in cache, so below 128 px they win at every band. On CUDA the
# FFT is used because cuFFT's result does not depend on the user's TF32 matmul setting, which
# would otherwise cost the crop its exactness (timm's train.py turns TF32 on).
_CPU_MATMUL_MAX_RATIO = 0.6
_CPU_FFT_MIN_SIDE = 128


def choose_backend(in_hw: tuple[int, int], band: tuple[int, int], device: torch.device | str = "cpu") -> str:
    """The faster exact backend for this input size, band and device (the measured rule above)."""
    if torch.device(device).type == "cuda":
        return "fft"
    ratio = max(band[0] / in_hw[0], band[1] / in_hw[1])
    wide = ratio > _CPU_MATMUL_MAX_RATIO and min(in_hw) >= _CPU_FFT_MIN_SIDE
    return "fft" if wide else "matmul"


# ------------------------------------------------------------------------------ front end
def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return int(size), int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"size = {size!r} is invalid; give an int or an (h, w) pair of ints")


def _floats(values: Sequence[float] | None, default: float, count: int) -> tuple[float, ...]:
    return (default,) * count if values is None else tuple(float(v) for v in values)


@functools.lru_cache(maxsize=32)
def _channel_vector(values: tuple[float, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Per-channel values as a (C, 1, 1) tensor, made once per device: building it every call
    would copy it from the host, which on CUDA also waits for the stream."""
    return torch.tensor(values, dtype=dtype, device=device)[:, None, None]


class FourierCropper:
    """:func:`fourier_crop` with work buffers kept between calls (one instance per thread).

    ``channel_scale``/``channel_shift`` (length C) are applied to the output, so a
    normalisation ``(y - mean) / std`` can be fused: the crop keeps each channel's mean, so
    normalising before or after it gives the same result. The returned tensor is owned by the
    cropper and overwritten by its next call unless ``out`` is given.
    """

    def __init__(self, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend = {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self._buffers: dict[str, torch.Tensor] = {}

    def _alloc(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < math.prod(shape):
            buf = torch.empty(math.prod(shape), dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[: math.prod(shape)].view(shape)

    def __call__(self, images: Any, size: int | Sequence[int], *, layout: str = "NCHW",
                 out_layout: str | None = None, channel_scale: Sequence[float] | None = None,
                 channel_shift: Sequence[float] | None = None, out: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
        x, (bh, bw), out_layout = _check(images, size, layout, out_layout)
        xc = x if layout == "NCHW" else x.permute(0, 3, 1, 2)  # a strided view: no copy here
        n, c, h, w = xc.shape
        fdtype = dtype or (x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32)
        y = self._alloc("y", (n, c, bh, bw), fdtype, x.device)
        if (bh, bw) == (h, w):
            y.copy_(xc)
        else:
            backend = self.backend if self.backend != "auto" else choose_backend((h, w), (bh, bw), x.device)
            _KERNELS[backend](xc, y, self._alloc)
        if channel_scale is not None or channel_shift is not None:
            dev = str(x.device)
            y.mul_(_channel_vector(_floats(channel_scale, 1.0, c), fdtype, dev))
            y.add_(_channel_vector(_floats(channel_shift, 0.0, c), fdtype, dev))
        result = y.permute(0, 2, 3, 1) if out_layout == "NHWC" else y
        if out is not None:
            out.copy_(result)
            return out
        return result


def _check(images: Any, size: Any, layout: str, out_layout: str | None) -> tuple[torch.Tensor, tuple[int, int], str]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout = {layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    out_layout = layout if out_layout is None else out_layout
    if out_layout not in LAYOUTS:
        raise ValueError(f"out_layout = {out_layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(images)
    elif isinstance(images, torch.Tensor):
        x = images
    else:
        raise ValueError(f"images is a {type(images).__name__}; give a torch tensor or a NumPy array")
    if x.dim() != 4:
        raise ValueError(f"images has {x.dim()} dimensions (shape {tuple(x.shape)}); give a 4-D batch "
                         f"in {layout} layout")
    h, w = (x.shape[2], x.shape[3]) if layout == "NCHW" else (x.shape[1], x.shape[2])
    bh, bw = _pair(size)
    if not (1 <= bh <= h and 1 <= bw <= w):
        raise ValueError(f"size = {size!r} is invalid for {h} x {w} images; each side must be "
                         f"between 1 and the input side")
    return x, (bh, bw), out_layout


def fourier_crop(images: Any, size: int | Sequence[int], *, layout: str = "NCHW",
                 out_layout: str | None = None, backend: str = "auto") -> Any:
    """Keep the centred ``size`` block of each image's spectrum (the formula of the module
    docstring: fft2, the centred block, the real part of its ifft2, scaled by (Bh/H)(Bw/W)).

    ``images``: a torch tensor (CPU or CUDA) or a NumPy array, 4-D in ``layout`` (``"NCHW"``
    or ``"NHWC"``); float32 and float64 are kept, other types (uint8) give float32.
    ``size``: an int or ``(h, w)``, each between 1 and the input side; a size equal to the
    input returns the input (as float). ``out_layout`` defaults to ``layout``. The result is a
    new array or tensor of the input's kind, on the input's device.
    """
    # a cropper of its own: the buffers, and so the result, belong to this call alone
    result = FourierCropper(backend)(images, size, layout=layout, out_layout=out_layout).contiguous()
    return result.numpy() if isinstance(images, np.ndarray) else result
