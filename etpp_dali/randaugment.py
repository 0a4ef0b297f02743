"""RandAugment as timm's ``rand-m{m}-mstd0.5-inc1``, with its randomness drawn in NumPy and its
image work done by DALI operators (CPU or GPU).

Per sample (as timm's ``RandAugment``): 2 ops drawn uniformly, with replacement, from the 15
"increasing" ops below; each is applied with probability 0.5 at magnitude ``N(m, 0.5)`` clipped
to [0, 10]; signed ops get a random sign. The draws are made here, from a generator seeded by
(seed, epoch, batch), so a run is reproducible and resumable whatever DALI prefetches.

How it runs in DALI, and why:

- the geometric ops (rotate, shear, translate) of a sample are composed into one affine matrix
  and applied by a single bilinear warp, only to the samples that drew one (~31% of the images
  at p = 0.5); on the CPU the warp is OpenCV's ``warpAffine``, bicubic as timm (~0.8 ms per
  224-px image against 2.5 ms for DALI's bilinear CPU ``warp_affine``), on the GPU DALI's;
- the colour ops run in the drawn order after the warp. On the CPU they are Pillow's own
  functions (what timm calls, so they match exactly), one batch call for the batches that drew
  any; on the GPU they are DALI operators, each run only on the samples that drew it (DALI
  conditionals split the batch; an 8-way dispatch costs ~0.1 ms per image).

Differences from timm (PIL), all small, all listed here and in the README:

| op | timm (PIL) | here (DALI) |
|---|---|---|
| Rotate | +-30 deg x m/10, bicubic, fill (124,116,104) | same angle and fill; CPU: bicubic (OpenCV, a = -0.75), GPU: bilinear |
| ShearX/Y | +-0.3 x m/10, bicubic | same factor and interpolation as Rotate |
| TranslateX/YRel | +-0.45 x m/10 of the side | same |
| two geometric ops | two resamplings | one resampling of the composed map |
| op order | as drawn | geometric ops first, then colour ops as drawn |
| PosterizeIncreasing | 4 - int(m x 4/10) bits kept (0 bits: Pillow 13 raises, 12 gives black) | same bits; 0 bits gives black |
| SolarizeIncreasing | invert pixels >= 256 - int(m x 256/10) | same |
| SolarizeAdd | +int(m x 110/10) on pixels < 128 | same |
| colour ops (the ten below) | Pillow | CPU: Pillow itself (exact); GPU: DALI, as listed |
| Color/Contrast/Brightness/SharpnessIncreasing | factor 1 +- 0.9 x m/10 | GPU: same factors, within 2 levels |
| Sharpness | PIL SMOOTH kernel, 1-px border kept | GPU: same kernel, border reflected |
| AutoContrast, Invert | per-channel min/max stretch, 255 - x | GPU: same (within 1 level) |
| Equalize | PIL's histogram formula | GPU: DALI's (OpenCV's) formula |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["OPS", "GEOMETRIC", "RandAugmentParams", "sample_randaugment", "apply_randaugment", "FILL"]

# timm's _RAND_INCREASING_TRANSFORMS, in timm's order
OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# colour ops get codes 1..10 in the DALI graph; 0 means "nothing in this slot"
COLOUR = tuple(op for op in OPS if op not in GEOMETRIC)
_COLOUR_CODE = {op: i + 1 for i, op in enumerate(COLOUR)}
FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean: the fill of geometric ops
NUM_OPS, PROB, MAG_STD, MAG_MAX = 2, 0.5, 0.5, 10.0


@dataclass
class RandAugmentParams:
    """Per-sample parameters of one batch, ready to feed DALI.

    ``matrix``: (N, 2, 3) float32 inverse affine maps (output pixel -> input pixel, pixel
    centres at i + 0.5), meaningful where ``geometric`` is True. ``colour``: (N, 2) int32 colour-op codes (0 = none) in application
    order. ``value``: (N, 2) float32 op parameter (factor, threshold, shift or bit mask).
    ``magnitude``: (N,) float32, the stage's magnitude m (what was asked for, before noise).
    """

    matrix: np.ndarray
    geometric: np.ndarray
    colour: np.ndarray
    value: np.ndarray
    magnitude: np.ndarray


def _level(m: np.ndarray) -> np.ndarray:
    return m / MAG_MAX


def _geometric_matrix(op: str, level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    """3x3 inverse map (output pixel -> input pixel) of one geometric op, as PIL applies it."""
    h, w = size
    if op == "Rotate":
        # PIL rotates counter-clockwise about the centre; the inverse map rotates back
        a = math.radians(30.0 * level * sign)
        c, s = math.cos(a), math.sin(a)
        cx, cy = w / 2.0, h / 2.0
        return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    if op == "ShearX":
        return np.array([[1, 0.3 * level * sign, 0], [0, 1, 0], [0, 0, 1]])
    if op == "ShearY":
        return np.array([[1, 0, 0], [0.3 * level * sign, 1, 0], [0, 0, 1]])
    if op == "TranslateXRel":
        return np.array([[1, 0, 0.45 * level * sign * w], [0, 1, 0], [0, 0, 1]])
    if op == "TranslateYRel":
        return np.array([[1, 0, 0], [0, 1, 0.45 * level * sign * h], [0, 0, 1]])
    raise ValueError(op)


def _colour_value(op: str, level: float, sign: float) -> float:
    """The parameter DALI needs for a colour op at ``level`` = m/10 (timm's level_to_arg)."""
    if op in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return 1.0 + 0.9 * level * sign
    if op == "PosterizeIncreasing":
        bits = 4 - int(level * 4)
        return float((0xFF << (8 - bits)) & 0xFF) if bits > 0 else 0.0  # the kept-bits mask
    if op == "SolarizeIncreasing":
        return float(256 - int(level * 256))
    if op == "SolarizeAdd":
        return float(int(level * 110))
    return 0.0  # AutoContrast, Equalize, Invert take no parameter


def sample_randaugment(rng: np.random.Generator, magnitudes: np.ndarray, size: tuple[int, int],
                       enabled: bool = True) -> RandAugmentParams:
    """Draw one batch's RandAugment parameters (``magnitudes``: the stage's m per sample)."""
    n = len(magnitudes)
    matrix = np.tile(np.eye(3), (n, 1, 1))
    geometric = np.zeros(n, dtype=bool)
    colour = np.zeros((n, NUM_OPS), dtype=np.int32)
    value = np.zeros((n, NUM_OPS), dtype=np.float32)
    if enabled:
        ops = rng.integers(0, len(OPS), size=(n, NUM_OPS))
        applied = rng.random((n, NUM_OPS)) < PROB
        mags = np.clip(rng.normal(magnitudes[:, None], MAG_STD, size=(n, NUM_OPS)), 0.0, MAG_MAX)
        signs = np.where(rng.random((n, NUM_OPS)) < 0.5, -1.0, 1.0)
        for i in range(n):
            slot = 0
            for k in range(NUM_OPS):
                if not applied[i, k]:
                    continue
                op = OPS[ops[i, k]]
                level = float(_level(mags[i, k]))
                if op in GEOMETRIC:
                    # op k applied after the earlier ones: its inverse map is applied first
                    matrix[i] = matrix[i] @ _geometric_matrix(op, level, signs[i, k], size)
                    geometric[i] = True
                else:
                    colour[i, slot] = _COLOUR_CODE[op]
                    value[i, slot] = _colour_value(op, level, signs[i, k])
                    slot += 1
    return RandAugmentParams(matrix[:, :2, :].astype(np.float32), geometric, colour, value,
                             np.asarray(magnitudes, dtype=np.float32))


# ----------------------------------------------------------------------------- DALI graph
def _colour_op(img, code, value, device: str):
    """Apply colour op ``code`` (a per-sample DataNode) with its parameter ``value``.

    Written for DALI's conditional mode: each branch runs only on the samples that take it.
    Each branch is one arithmetic expression (DALI evaluates an expression tree in one pass)
    or one fused operator; casts are kept to one per branch, because every extra float pass
    over a 224-px image costs ~0.3 ms on the CPU.
    """
    from nvidia.dali import fn, types

    u8, f32 = types.UINT8, types.FLOAT
    # per-sample scalars travel with the image (GPU arithmetic takes GPU operands)
    v = value.gpu() if device == "gpu" else value
    if code == _COLOUR_CODE["AutoContrast"]:
        lo = fn.reductions.min(img, axis_names="HW", keep_dims=True)
        span = fn.cast(fn.reductions.max(img, axis_names="HW", keep_dims=True) - lo, dtype=f32)
        flat = fn.cast(span == 0.0, dtype=f32)  # a flat channel stays as it is (PIL)
        scale = 255.0 / (span + flat) * (1.0 - flat) + flat
        lo = fn.cast(lo, dtype=f32) * (1.0 - flat)
        img = fn.cast((img - lo) * scale - 0.4999, dtype=u8)  # PIL truncates
    elif code == _COLOUR_CODE["Equalize"]:
        img = fn.equalize(img)
    elif code == _COLOUR_CODE["Invert"]:
        img = types.Constant(255, dtype=u8) - img
    elif code == _COLOUR_CODE["PosterizeIncreasing"]:
        img = img & fn.cast(v, dtype=u8)
    elif code == _COLOUR_CODE["SolarizeIncreasing"]:
        # 255 - x == x ^ 255 for uint8: one expression, no float pass
        img = img ^ (fn.cast(img >= fn.cast(v, dtype=types.INT32), dtype=u8) * types.Constant(255, dtype=u8))
    elif code == _COLOUR_CODE["SolarizeAdd"]:
        # x + add stays below 256 for x < 128 and add <= 110
        img = img + fn.cast(img < types.Constant(128, dtype=u8), dtype=u8) * fn.cast(v, dtype=u8)
    elif code == _COLOUR_CODE["ColorIncreasing"]:
        grey = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.GRAY)
        img = fn.cast(v * img + (1.0 - v) * grey, dtype=u8)
    elif code == _COLOUR_CODE["ContrastIncreasing"]:
        grey = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.GRAY)
        centre = fn.cast(fn.reductions.mean(grey, axis_names="HWC") + 0.5, dtype=types.INT32)
        if device == "gpu":  # the centre lives on the GPU: no argument input, so arithmetic
            img = fn.cast(centre + (img - fn.cast(centre, dtype=f32)) * v, dtype=u8)
        else:
            img = fn.brightness_contrast(img, contrast=value, contrast_center=fn.cast(centre, dtype=f32))
    elif code == _COLOUR_CODE["BrightnessIncreasing"]:
        img = fn.brightness_contrast(img, brightness=value)
    elif code == _COLOUR_CODE["SharpnessIncreasing"]:
        kernel = v * types.Constant(_IDENTITY_KERNEL) + (1.0 - v) * types.Constant(_SMOOTH_KERNEL)
        img = fn.filter(img, kernel, border="reflect_101")  # the kernel on the image's device
    return img


_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0
_IDENTITY_KERNEL = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


def apply_colour_ops_dali(img, colour, value, device: str):
    """The colour ops of both slots with DALI operators, each on the samples that drew it (the
    GPU path; runs on CPU data too)."""
    for k in range(NUM_OPS):
        code = colour[k]
        if code > 0:
            img = _colour_op(img, code, value[k], device)
    return img


def apply_randaugment(img, matrix, geometric, colour, value, size: tuple[int, int], device: str = "cpu"):
    """Apply drawn parameters to HWC uint8 ``img`` of ``size`` (h, w) (CPU or GPU DataNodes).

    ``matrix`` (2x3 per sample), ``geometric`` (bool), ``colour`` and ``value`` (2 per sample)
    come from :func:`sample_randaugment` through ``fn.external_source``. Needs a pipeline built
    with ``enable_conditionals=True``. On the CPU the colour ops are Pillow's own (what timm
    calls), one batch call on the samples that drew any; on the GPU, DALI operators.
    """
    from nvidia.dali import fn

    from .dali_ops import warp_affine

    if geometric:
        img = warp_affine(img, matrix, fill=FILL, size=size)
    if device == "gpu":
        return apply_colour_ops_dali(img, colour, value, device)
    if fn.reductions.max(colour) > 0:
        img = fn.python_function(img, colour, value, function=pil_colour_ops, batch_processing=True,
                                 device="cpu", output_layouts="HWC")
    return img


def _pil_op(img, code: int, value: float):
    """One colour op as timm applies it, with Pillow (the PIL image ``img`` in, a new one out)."""
    from PIL import ImageEnhance, ImageOps

    op = COLOUR[code - 1]
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Invert":
        return ImageOps.invert(img)
    if op == "PosterizeIncreasing":  # value: the kept-bits mask (0: black, as Pillow < 13)
        return img.point([i & int(value) for i in range(256)] * len(img.getbands()))
    if op == "SolarizeIncreasing":
        return ImageOps.solarize(img, int(value))
    if op == "SolarizeAdd":
        add = int(value)
        return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands()))
    enhance = {"ColorIncreasing": ImageEnhance.Color, "ContrastIncreasing": ImageEnhance.Contrast,
               "BrightnessIncreasing": ImageEnhance.Brightness, "SharpnessIncreasing": ImageEnhance.Sharpness}[op]
    return enhance(img).enhance(float(value))


def _pil_colour_sample(item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    from PIL import Image

    img, codes, values = item
    if not codes.any():
        return img
    pil = Image.fromarray(img)
    for code, v in zip(codes, values):
        if code > 0:
            pil = _pil_op(pil, int(code), float(v))
    return np.asarray(pil)


def pil_colour_ops(images: list[np.ndarray], colour: list[np.ndarray], value: list[np.ndarray]) -> list[np.ndarray]:
    """Batch function for DALI: both slots' colour ops per sample, in the drawn order."""
    from .dali_ops import _map_samples

    return _map_samples(_pil_colour_sample, list(zip(images, colour, value)))
