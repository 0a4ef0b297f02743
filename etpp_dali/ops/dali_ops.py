"""The DALI operators of the graphs: the low-frequency crop, the resize, the affine warp and
RandAugment, each on CPU and GPU data.

The low-frequency crop. DALI has no 2-D FFT, so the crop runs as a Python operator over the
whole batch, with the numeric work in torch (MKL FFT/BLAS on the CPU, cuFFT on the GPU), which
releases the GIL:

- CPU: ``fn.python_function(batch_processing=True)``. The batch arrives as NumPy views of DALI's
  buffers; when the samples lie back to back (the usual case) they are used in place, else
  stacked once. One :class:`~etpp_dali.ops.fourier.FourierCropper` per operator keeps the work
  buffers between iterations.
- GPU: ``fn.dl_tensor_python_function`` with ``synchronize_stream=False``: the samples arrive
  as DLPack CUDA tensors and the crop is queued on DALI's own CUDA stream (a
  ``torch.cuda.ExternalStream`` of ``PythonFunction.current_stream()``), so it is ordered after
  the operators that made its input and before DALI's copy of its output, without a host sync
  and without waiting for work on other streams (the training step's).
- A per-sample band reaches the function as the length of a 1-D uint8 tensor made from the
  CPU band (``fn.zeros(shape=band)``): a shape is host metadata even for a GPU tensor, so
  the band is read without a device-to-host copy.

Why not a compiled C++/CUDA operator plugin: it would need the DALI headers, a C++ compiler
and, for CUDA, nvcc at install time, against the "plain ``pip install``" rule; the Python
operator's overhead is one call per batch, and its cost is the FFT/GEMM work itself, which a
plugin would do with the same libraries.

The named approximation ``lowpass="resize"`` (what the EfficientTrain++ reference code does
instead of the FFT) is DALI's anti-aliased Lanczos resize to the band.

RandAugment (:func:`apply_randaugment`) applies the draws of :mod:`etpp_dali.ops.randaugment`:
the geometric ops of a sample as one warp (only on the samples that drew one), then the colour
ops in the drawn order. On the CPU these are Pillow's own functions, one batch call over the
samples that drew any; on the GPU, the DALI expressions of the op table, one conditional branch
per distinct expression and slot (DALI's conditionals run a branch only on its samples).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.data_node import DataNode
from nvidia.dali.ops import PythonFunction
from torch.utils import dlpack

from etpp_dali.ops.fourier import FourierCropper
from etpp_dali.ops.randaugment import FILL, OPS_PER_IMAGE, apply_colour_ops_pil, colour_branches
from etpp_dali.util.threads import map_threads, usable_cores

__all__ = ["IMAGENET_MEAN_255", "IMAGENET_STD_255", "LOWPASS_MODES", "apply_colour_ops", "apply_drawn_colour_ops",
           "apply_geometric_ops", "apply_randaugment", "fourier_crop", "lowpass", "pil_colour_ops", "resize",
           "warp_affine"]

LOWPASS_MODES = ("fourier", "resize")
# ImageNet channel statistics on the 0..255 scale (timm's IMAGENET_DEFAULT_MEAN/STD x 255)
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _batch_view(samples: Sequence[np.ndarray]) -> np.ndarray:
    """The samples as one (N, ...) array, without a copy when they lie back to back."""
    first = samples[0]
    step = first.nbytes
    base = first.ctypes.data
    if all(s.shape == first.shape and s.dtype == first.dtype and s.flags.c_contiguous
           and s.ctypes.data == base + i * step for i, s in enumerate(samples)):
        return np.lib.stride_tricks.as_strided(first, shape=(len(samples),) + first.shape,
                                               strides=(step,) + first.strides)
    return np.stack(samples)


def map_samples(func: Any, items: Sequence[Any]) -> list[Any]:
    """``[func(x) for x in items]`` on up to 4 threads for batches of 8 or more.

    The per-sample work (torch, OpenCV, Pillow) releases the GIL, and a Python operator runs on
    one DALI thread: splitting its batch lets it use cores that would otherwise wait for it.
    """
    return map_threads(func, items, workers=min(4, usable_cores()), min_items=8)


def _groups(bands: Sequence[int]) -> dict[int, list[int]]:
    """Sample indices by band, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for i, b in enumerate(bands):
        out.setdefault(int(b), []).append(i)
    return out


def _stack_in_place(samples: Sequence[np.ndarray]) -> torch.Tensor:
    with warnings.catch_warnings():  # DALI's input views may be read-only; we only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(_batch_view(samples))


class _CropOp:
    """The batch function: images (+ band carriers) in, cropped float32 CHW samples out.

    A per-sample band arrives as the length of a 1-D "carrier" tensor (see
    :func:`_band_carrier`); samples that share a band are cropped as one batch.
    """

    def __init__(self, band: int | None, layout: str, scale: list[float] | None,
                 shift: list[float] | None, backend: str) -> None:
        self.band = band
        self.layout = "NHWC" if layout == "HWC" else "NCHW"
        self.scale, self.shift = scale, shift
        self.backend = backend
        self.cropper = FourierCropper(backend)
        self._stream_ptr: int | None = None

    def _bands(self, count: int, carriers: Sequence[Any] | None) -> list[int]:
        return [self.band] * count if carriers is None else [int(c.shape[0]) for c in carriers]

    def _crop_by_band(self, samples: Sequence[Any], bands: list[int], stack: Callable[[list], torch.Tensor],
                      own: bool) -> list[torch.Tensor]:
        """Per-sample crops in input order. ``own``: copy them out of the cropper's buffers (else
        they are views, valid until its next call)."""
        groups = _groups(bands)
        own = own or len(groups) > 1  # the next group reuses the buffers
        outputs: list[torch.Tensor] = [None] * len(samples)  # type: ignore[list-item]
        for band, idx in groups.items():
            y = self.cropper(stack([samples[i] for i in idx]), band, layout=self.layout, out_layout="NCHW",
                             channel_scale=self.scale, channel_shift=self.shift)
            if own:
                y = y.clone()
            for k, i in enumerate(idx):
                outputs[i] = y[k]
        return outputs

    def cpu(self, images: list[np.ndarray], carriers: list[np.ndarray] | None = None) -> list[np.ndarray]:
        # views of the cropper's buffer are fine: DALI copies the outputs before the next call
        outputs = self._crop_by_band(images, self._bands(len(images), carriers), _stack_in_place, own=False)
        return [y.numpy() for y in outputs]

    def gpu(self, images: list, carriers: list | None = None) -> list:
        tensors = [dlpack.from_dlpack(t) for t in images]
        bands = self._bands(len(tensors), None if carriers is None else [dlpack.from_dlpack(c) for c in carriers])
        with torch.cuda.stream(self._dali_stream(tensors[0].device)):
            # owned outputs: DALI's copy of them is queued, not done, when this returns
            outputs = self._crop_by_band(tensors, bands, torch.stack, own=True)
        return [dlpack.to_dlpack(t) for t in outputs]

    def _dali_stream(self, device: torch.device) -> "torch.cuda.ExternalStream":
        """The CUDA stream DALI runs this operator on, for torch."""
        ptr = PythonFunction.current_stream().ptr
        if ptr != self._stream_ptr:
            # work buffers belong to the stream that used them: fresh ones for a new stream
            self.cropper = FourierCropper(self.backend)
            self._stream_ptr = ptr
        return torch.cuda.ExternalStream(ptr, device=device)


def torch_resize_mode(interpolation: str) -> str:
    """torch's name for ``"cubic"`` / ``"linear"``."""
    if interpolation not in ("cubic", "linear"):
        raise ValueError(f"interpolation = {interpolation!r} is unknown; use 'cubic' or 'linear'")
    return "bicubic" if interpolation == "cubic" else "bilinear"


def resize_hwc(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Anti-aliased resize of one HWC uint8 image (or view) to ``size`` (h, w) with torch.

    torch's uint8 channels-last anti-aliased kernels: they compute torchvision's (so timm's)
    anti-aliased filter, and are faster on the CPU than DALI's resize, which would otherwise be
    the largest cost of the graph after decoding.
    """
    x = torch.from_numpy(img).unsqueeze(0).permute(0, 3, 1, 2)  # channels-last view, no copy
    y = torch.nn.functional.interpolate(x, size=(int(size[0]), int(size[1])), mode=mode, antialias=True,
                                        align_corners=False)
    return y.permute(0, 2, 3, 1)[0].numpy()  # HWC, contiguous


class _ResizeOp:
    """Batch function: HWC uint8 samples of any size -> :func:`resize_hwc` to one ``size``."""

    def __init__(self, size: tuple[int, int], mode: str) -> None:
        self.size, self.mode = size, mode

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return map_samples(lambda img: resize_hwc(img, self.size, self.mode), images)


def resize(images: Any, *, size: tuple[int, int], interpolation: str = "cubic") -> Any:
    """Anti-aliased resize of HWC uint8 images to ``size`` (h, w).

    On the CPU through torch (:func:`resize_hwc`), on the GPU with DALI's ``fn.resize``.
    ``interpolation``: ``"cubic"`` or ``"linear"``.
    """
    mode = torch_resize_mode(interpolation)
    if images.device == "gpu":
        interp = types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR
        return fn.resize(images, size=list(size), interp_type=interp, antialias=True)
    op = _ResizeOp(tuple(size), mode)
    return fn.python_function(images, function=op, batch_processing=True, device="cpu", output_layouts="HWC")


class _WarpOp:
    """Batch function: bicubic affine warps of HWC uint8 images with OpenCV.

    ``cv2.warpAffine``, because it interpolates bicubically as timm (PIL) does, where DALI's CPU
    ``warp_affine`` is bilinear only, and is the fastest of the CPU candidates (torch's
    ``grid_sample`` was the other); its constant border takes the per-channel fill, and it
    releases the GIL.
    """

    def __init__(self, fill: Sequence[float]) -> None:
        self.fill = tuple(float(f) for f in fill)

    def _one(self, pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        img, m = pair
        h, w = img.shape[:2]
        return cv2.warpAffine(img, _opencv_matrix(m), (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=self.fill)

    def __call__(self, images: list[np.ndarray], matrices: list[np.ndarray]) -> list[np.ndarray]:
        return map_samples(self._one, list(zip(images, matrices)))


def _opencv_matrix(m: np.ndarray) -> np.ndarray:
    """A map in PIL's convention (pixel centres at i + 0.5) in OpenCV's (centres at i)."""
    m = np.asarray(m, dtype=np.float64)
    shifted = m.copy()
    shifted[:, 2] = m[:, 2] + 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    return shifted


def warp_affine(images: Any, matrix: Any, *, fill: Sequence[float], size: tuple[int, int]) -> Any:
    """Affine warp of HWC uint8 ``images`` of ``size`` (h, w) with a per-channel fill.

    ``matrix``: per-sample 2x3 inverse maps (output pixel -> input pixel, pixel centres at
    i + 0.5, as PIL's affine transform). CPU: OpenCV, bicubic as timm (see :class:`_WarpOp`).
    GPU: DALI's bilinear ``warp_affine`` over the image framed by 1 px of fill, clamping at the
    frame (its own ``fill_value`` is one value for all channels).
    """
    if images.device != "gpu":
        return fn.python_function(images, matrix, function=_WarpOp(fill), batch_processing=True, device="cpu",
                                   output_layouts="HWC")
    framed = fn.slice(images, types.Constant(np.array([-1.0, -1.0], np.float32)),
                      types.Constant(np.array([size[0] + 2.0, size[1] + 2.0], np.float32)),
                      axis_names="HW", normalized_anchor=False, normalized_shape=False,
                      out_of_bounds_policy="pad", fill_values=list(fill))
    shifted = matrix + types.Constant(np.array([[0, 0, 1], [0, 0, 1]], np.float32))  # into the framed image
    return fn.warp_affine(framed, matrix=shifted, size=[float(size[0]), float(size[1])],
                          interp_type=types.INTERP_LINEAR, inverse_map=True)


def _channel_affine(mean: Sequence[float] | None,
                    std: Sequence[float] | None) -> tuple[list[float] | None, list[float] | None]:
    """``(y - mean) / std`` as a per-channel scale and shift (None, None without either)."""
    if mean is None and std is None:
        return None, None
    mean = list(mean) if mean is not None else [0.0, 0.0, 0.0]
    std = list(std) if std is not None else [1.0] * len(mean)
    if any(s <= 0 for s in std):
        raise ValueError(f"std = {std!r} is invalid; every entry must be > 0")
    return [1.0 / s for s in std], [-m / s for m, s in zip(mean, std)]


def _band_carrier(band: Any, device: str) -> Any:
    """Per sample, a 1-D uint8 tensor of ``band`` zeros on ``device``: the band as a shape,
    which the Python operator reads on the host even from a GPU tensor."""
    if band.device != "cpu":
        raise ValueError("band is a GPU DataNode; give the per-sample band on the CPU (e.g. straight "
                         "from fn.external_source)")
    carrier = fn.zeros(shape=band, dtype=types.UINT8)
    return carrier.gpu() if device == "gpu" else carrier


def fourier_crop(images: Any, band: int | Any, *, layout: str = "HWC", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, backend: str = "auto") -> Any:
    """The exact low-frequency crop inside a ``@pipeline_def``.

    ``images``: a DataNode of uint8 or float images in ``layout`` (``"HWC"`` or ``"CHW"``), on
    the CPU or the GPU; all samples of a batch share one size. ``band``: a Python int, or a CPU
    DataNode with one integer per sample (e.g. from ``fn.external_source``), so the band can
    change between iterations without a rebuild. ``mean``/``std`` (per channel, in the input's
    units) fuse the normalisation. Returns float32 CHW samples of ``band x band``.
    """
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"layout = {layout!r} is unknown; use 'HWC' or 'CHW'")
    scale, shift = _channel_affine(mean, std)
    dynamic = isinstance(band, DataNode)
    if not dynamic and (not isinstance(band, (int, np.integer)) or isinstance(band, bool) or band < 1):
        raise ValueError(f"band = {band!r} is invalid; give an int >= 1 or a DataNode of ints")
    op = _CropOp(None if dynamic else int(band), layout, scale, shift, backend)
    inputs = [images, _band_carrier(band, images.device)] if dynamic else [images]
    if images.device == "gpu":
        # no stream sync: the function queues its work on DALI's stream (see _CropOp.gpu)
        return fn.dl_tensor_python_function(*inputs, function=op.gpu, batch_processing=True,
                                            synchronize_stream=False, device="gpu", output_layouts="CHW")
    return fn.python_function(*inputs, function=op.cpu, batch_processing=True, device="cpu",
                              output_layouts="CHW")


def lowpass(images: Any, band: int | Any, *, mode: str = "fourier", layout: str = "HWC",
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            backend: str = "auto") -> Any:
    """Low-pass ``images`` (uint8 HWC) to ``band`` and normalise to float32 CHW.

    ``mode="fourier"``: the exact crop (the default). ``mode="resize"``: the named approximation
    of the EfficientTrain++ reference code, an anti-aliased Lanczos resize to ``band x band``
    (a different operator: it is never chosen silently).
    """
    if mode == "fourier":
        return fourier_crop(images, band, layout=layout, mean=mean, std=std, backend=backend)
    if mode != "resize":
        raise ValueError(f"lowpass = {mode!r} is unknown; use one of {', '.join(LOWPASS_MODES)}")
    if layout != "HWC":
        raise ValueError("lowpass='resize' takes HWC images")
    size = fn.stack(band, band) if not isinstance(band, int) else [band, band]
    small = fn.resize(images, size=fn.cast(size, dtype=types.FLOAT) if not isinstance(band, int) else size,
                      interp_type=types.INTERP_LANCZOS3, antialias=True)
    return fn.crop_mirror_normalize(small, mean=list(mean) if mean is not None else [0.0] * 3,
                                    std=list(std) if std is not None else [1.0] * 3,
                                    output_layout="CHW", dtype=types.FLOAT)


# ------------------------------------------------------------------------------ RandAugment
def pil_colour_ops(images: list[np.ndarray], colour: list[np.ndarray], value: list[np.ndarray]) -> list[np.ndarray]:
    """Batch function for DALI: each sample's colour ops with Pillow, in the drawn order."""
    return map_samples(lambda item: apply_colour_ops_pil(*item), list(zip(images, colour, value)))


def apply_colour_ops(images: Any, colour: Any, value: Any) -> Any:
    """The colour ops of both slots with the table's DALI expressions (the GPU path; it runs on
    CPU data too). Needs ``enable_conditionals=True``.

    Per slot, one branch per distinct expression (:func:`colour_branches`), each run only on
    the samples whose op uses it; one look-up table maps all op codes to branch numbers.
    """
    branches = colour_branches()
    codes = [code for _, op_codes in branches for code in op_codes]
    numbers = [number for number, (_, op_codes) in enumerate(branches, start=1) for _ in op_codes]
    branch = fn.lookup_table(colour, keys=codes, values=numbers, default_value=0, dtype=types.INT32)
    for slot in range(OPS_PER_IMAGE):
        slot_branch, args = branch[slot], value[slot]
        for number, (expression, _) in enumerate(branches, start=1):
            if slot_branch == number:
                images = expression(images, args)
    return images


def apply_geometric_ops(images: Any, matrix: Any, geometric: Any, size: tuple[int, int]) -> Any:
    """RandAugment's geometric ops of each sample as one warp (:func:`warp_affine`), run only on the
    samples that drew any (``geometric``); ``matrix``: their composed 2x3 inverse maps. Needs
    ``enable_conditionals=True``."""
    if geometric:
        images = warp_affine(images, matrix, fill=FILL, size=size)
    return images


def apply_drawn_colour_ops(images: Any, colour: Any, value: Any) -> Any:
    """RandAugment's colour ops of each sample (``colour``, ``value``: per slot), on the CPU with
    Pillow (what timm calls: one batch call over the samples that drew any), on the GPU with
    :func:`apply_colour_ops`. Needs ``enable_conditionals=True``."""
    if images.device == "gpu":
        return apply_colour_ops(images, colour, value)
    if fn.reductions.max(colour) > 0:
        images = fn.python_function(images, colour, value, function=pil_colour_ops, batch_processing=True,
                                    device="cpu", output_layouts="HWC")
    return images


def apply_randaugment(images: Any, matrix: Any, geometric: Any, colour: Any, value: Any,
                      size: tuple[int, int]) -> Any:
    """Apply drawn parameters to HWC uint8 ``images`` of ``size`` (h, w), CPU or GPU DataNodes.

    ``matrix`` (2x3 per sample), ``geometric`` (bool), ``colour`` and ``value`` (per slot) come
    from :func:`~etpp_dali.ops.randaugment.sample_randaugment` through ``fn.external_source``.
    Needs a pipeline built with ``enable_conditionals=True``. The geometric ops first
    (:func:`apply_geometric_ops`), then the colour ops (:func:`apply_drawn_colour_ops`).
    """
    return apply_drawn_colour_ops(apply_geometric_ops(images, matrix, geometric, size), colour, value)
