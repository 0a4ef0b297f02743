"""RandAugment as timm's ``rand-m{m}-mstd0.5-inc1``: the draws, in NumPy, and the op table.

Per sample (as timm's ``RandAugment``): 2 ops drawn uniformly, with replacement, from the 15
"increasing" ops of :data:`OPS`; each is applied with probability 0.5 at magnitude ``N(m, 0.5)``
clipped to [0, 10]; signed ops get a random sign. The draws are made here, from a generator
seeded by (seed, epoch, batch), so a run is reproducible and resumable whatever DALI prefetches.

The op table. :data:`OPS` lists timm's ops in timm's order (a draw is an index into it); each
row (:class:`RandOp`) holds all there is to know about one op:

- ``arg(level, sign, (h, w))``, timm's ``level_to_arg`` at ``level = m / 10``: for a geometric
  op its 3x3 inverse map (output pixel -> input pixel, pixel centres at i + 0.5, as PIL's affine
  transform applies it), for a colour op its arguments (up to :data:`NUM_ARGS` numbers);
- ``pil(image, args)``: the colour op with Pillow, as timm calls it (the CPU path);
- ``dali(image, args)``: the colour op as DALI operators on DataNodes (the GPU path). Rows that
  share one expression share one branch of the GPU graph: the four look-up-table ops are all
  :func:`lut_expression`, ``((x & mask) ^ (255 if x >= threshold else 0)) + (add if x < 128
  else 0)``, and differ only in their (mask, threshold, add).

Geometric rows have neither function: the graph composes a sample's geometric ops into one
affine map and applies one warp. Adding an op is one row here, plus its tests: the draws, the
Pillow batch operator and the DALI graph (:func:`etpp_dali.ops.dali_ops.apply_randaugment`) all read
the table. The draws and the Pillow ops need only NumPy and Pillow; the DALI expressions build
graph nodes only when a pipeline is defined.

Differences from timm (PIL), all small, all listed here and in the README:

| op | timm (PIL) | here (DALI) |
|---|---|---|
| Rotate | +-30 deg x m/10, bicubic, fill (124,116,104) | same; CPU: bicubic (OpenCV, a = -0.75), GPU: bilinear |
| ShearX/Y | +-0.3 x m/10, bicubic | same factor and interpolation as Rotate |
| TranslateX/YRel | +-0.45 x m/10 of the side | same |
| two geometric ops | two resamplings | one resampling of the composed map |
| op order | as drawn | geometric ops first, then colour ops as drawn |
| PosterizeIncreasing | 4 - int(m x 4/10) bits kept (0 bits: Pillow 13 raises, 12: black) | same bits; 0 bits: black |
| SolarizeIncreasing | invert pixels >= 256 - int(m x 256/10) | same |
| SolarizeAdd | +int(m x 110/10) on pixels < 128 | same |
| colour ops (the ten below) | Pillow | CPU: Pillow itself (exact); GPU: DALI, as listed |
| Invert, Posterize, Solarize, SolarizeAdd | look-up tables | GPU: identical (one expression) |
| Color/Contrast/Brightness/SharpnessIncreasing | factor 1 +- 0.9 x m/10 | GPU: same factors, within 2 levels |
| Sharpness | PIL SMOOTH kernel, 1-px border kept | GPU: same kernel, border reflected |
| AutoContrast | per-channel min/max stretch | GPU: same (within 1 level) |
| Equalize | PIL's histogram formula | GPU: DALI's (OpenCV's) formula |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["COLOUR", "FILL", "GEOMETRIC", "NUM_ARGS", "OPS", "OPS_PER_IMAGE", "RandAugmentParams", "RandOp",
           "apply_colour_ops_pil", "colour_branches", "lut", "lut_expression", "sample_randaugment"]

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean: the fill of geometric ops
OPS_PER_IMAGE, PROB, MAG_STD, MAG_MAX = 2, 0.5, 0.5, 10.0
NUM_ARGS = 3  # the most arguments a colour op takes: (mask, threshold, add) of the look-up-table ops


@dataclass(frozen=True)
class RandOp:
    """One row of the op table (see the module docstring). ``pil``/``dali`` are None for a
    geometric op, whose ``arg`` gives its 3x3 inverse map."""

    name: str
    arg: Callable[[float, float, tuple[int, int]], Any]
    pil: Callable[[Image.Image, np.ndarray], Image.Image] | None = None
    dali: Callable[[Any, Any], Any] | None = None

    @property
    def geometric(self) -> bool:
        return self.pil is None


# ------------------------------------------------------------------------ level -> argument
def _rotate(level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    # PIL rotates counter-clockwise about the centre; the inverse map rotates back
    h, w = size
    a = math.radians(30.0 * level * sign)
    c, s = math.cos(a), math.sin(a)
    cx, cy = w / 2.0, h / 2.0
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])


def _shear_x(level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    return np.array([[1, 0.3 * level * sign, 0], [0, 1, 0], [0, 0, 1]])


def _shear_y(level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    return np.array([[1, 0, 0], [0.3 * level * sign, 1, 0], [0, 0, 1]])


def _translate_x(level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    return np.array([[1, 0, 0.45 * level * sign * size[1]], [0, 1, 0], [0, 0, 1]])


def _translate_y(level: float, sign: float, size: tuple[int, int]) -> np.ndarray:
    return np.array([[1, 0, 0], [0, 1, 0.45 * level * sign * size[0]], [0, 0, 1]])


def _no_args(level: float, sign: float, size: tuple[int, int]) -> tuple:
    return ()


def _enhance_factor(level: float, sign: float, size: tuple[int, int]) -> tuple[float]:
    return (1.0 + 0.9 * level * sign,)


# (mask, threshold, add) of lut(); the identity is (255, 256, 0)
def _invert_lut(level: float, sign: float, size: tuple[int, int]) -> tuple[int, int, int]:
    return 255, 0, 0


def _posterize_lut(level: float, sign: float, size: tuple[int, int]) -> tuple[int, int, int]:
    bits = 4 - int(level * 4)
    return (0xFF << (8 - bits)) & 0xFF if bits > 0 else 0, 256, 0  # 0 bits: black (as Pillow < 13)


def _solarize_lut(level: float, sign: float, size: tuple[int, int]) -> tuple[int, int, int]:
    return 255, 256 - int(level * 256), 0


def _solarize_add_lut(level: float, sign: float, size: tuple[int, int]) -> tuple[int, int, int]:
    return 255, 256, int(level * 110)


def lut(mask: int, threshold: int, add: int) -> np.ndarray:
    """The table of the look-up-table ops: ``((x & mask) ^ (255 if x >= threshold else 0)) +
    (add if x < 128 else 0)`` for x = 0..255. Invert is (255, 0, 0), Posterize (kept-bits mask,
    256, 0), Solarize (255, threshold, 0), SolarizeAdd (255, 256, add): no sum exceeds 255 for
    add <= 128, so the uint8 expression needs no clamp."""
    x = np.arange(256)
    return ((x & int(mask)) ^ np.where(x >= threshold, 255, 0)) + np.where(x < 128, int(add), 0)


# --------------------------------------------------------------------------------- Pillow
def _pil_lut(img: Image.Image, args: np.ndarray) -> Image.Image:
    return img.point(lut(*args).tolist() * len(img.getbands()))


def _pil_enhance(enhancer: type) -> Callable[[Image.Image, np.ndarray], Image.Image]:
    return lambda img, args: enhancer(img).enhance(float(args[0]))


# ------------------------------------------------------------------------------------ DALI
def _dali_autocontrast(img: Any, args: Any) -> Any:
    """PIL's per-channel stretch of [min, max] to [0, 255], truncated as PIL does; a flat
    channel is kept (there every pixel equals its minimum)."""
    lo = fn.reductions.min(img, axis_names="HW", keep_dims=True)
    span = fn.reductions.max(img, axis_names="HW", keep_dims=True) - lo
    scale = 255.0 / dmath.max(span, 1)
    offset = lo * (span == 0) - 0.4999  # DALI's cast rounds: -0.4999 makes it truncate
    return fn.cast((img - lo) * scale + offset, dtype=types.UINT8)


def _dali_equalize(img: Any, args: Any) -> Any:
    return fn.equalize(img)


def lut_expression(img: Any, args: Any) -> Any:
    """:func:`lut` on a uint8 DataNode, with per-sample ``args`` = (mask, threshold, add):
    uint8 arithmetic throughout (the threshold is compared as a float, as it can be 256)."""
    as_u8 = fn.cast(args, dtype=types.UINT8)
    inverted = (img >= args[1]) * types.Constant(255, dtype=types.UINT8)
    shifted = (img < types.Constant(128, dtype=types.UINT8)) * as_u8[2]
    return ((img & as_u8[0]) ^ inverted) + shifted


def _grey(img: Any) -> Any:
    return fn.color_space_conversion(img, image_type=types.RGB, output_type=types.GRAY)


def _dali_colour(img: Any, args: Any) -> Any:
    factor = args[0]
    return fn.cast(factor * img + (1.0 - factor) * _grey(img), dtype=types.UINT8)


def _dali_contrast(img: Any, args: Any) -> Any:
    """Blend with the grey mean, rounded as PIL (arithmetic: on the GPU the mean is device data,
    which ``brightness_contrast``'s argument inputs cannot take)."""
    centre = fn.cast(fn.reductions.mean(_grey(img), axis_names="HWC") + 0.5, dtype=types.INT32)
    return fn.cast(centre + (img - fn.cast(centre, dtype=types.FLOAT)) * args[0], dtype=types.UINT8)


def _dali_brightness(img: Any, args: Any) -> Any:
    return fn.brightness_contrast(img, brightness=args[0])


_SMOOTH_KERNEL = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13.0  # PIL's SMOOTH
_IDENTITY_KERNEL = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)


def _dali_sharpness(img: Any, args: Any) -> Any:
    """PIL's blend with the SMOOTH-filtered image is one filter (the blend of the kernels),
    made per sample on the CPU; DALI reflects the border PIL keeps."""
    factor = args[0]
    kernel = factor * types.Constant(_IDENTITY_KERNEL) + (1.0 - factor) * types.Constant(_SMOOTH_KERNEL)
    return fn.filter(img, kernel, border="reflect_101")


# ------------------------------------------------------------------------------- the table
OPS: tuple[RandOp, ...] = (  # timm's _RAND_INCREASING_TRANSFORMS, in timm's order
    RandOp("AutoContrast", _no_args, lambda img, args: ImageOps.autocontrast(img), _dali_autocontrast),
    RandOp("Equalize", _no_args, lambda img, args: ImageOps.equalize(img), _dali_equalize),
    RandOp("Invert", _invert_lut, lambda img, args: ImageOps.invert(img), lut_expression),
    RandOp("Rotate", _rotate),
    RandOp("PosterizeIncreasing", _posterize_lut, _pil_lut, lut_expression),
    RandOp("SolarizeIncreasing", _solarize_lut, lambda img, args: ImageOps.solarize(img, int(args[1])),
           lut_expression),
    RandOp("SolarizeAdd", _solarize_add_lut, _pil_lut, lut_expression),  # timm's own table, as lut()
    RandOp("ColorIncreasing", _enhance_factor, _pil_enhance(ImageEnhance.Color), _dali_colour),
    RandOp("ContrastIncreasing", _enhance_factor, _pil_enhance(ImageEnhance.Contrast), _dali_contrast),
    RandOp("BrightnessIncreasing", _enhance_factor, _pil_enhance(ImageEnhance.Brightness), _dali_brightness),
    RandOp("SharpnessIncreasing", _enhance_factor, _pil_enhance(ImageEnhance.Sharpness), _dali_sharpness),
    RandOp("ShearX", _shear_x),
    RandOp("ShearY", _shear_y),
    RandOp("TranslateXRel", _translate_x),
    RandOp("TranslateYRel", _translate_y),
)
GEOMETRIC = tuple(op.name for op in OPS if op.geometric)
COLOUR = tuple(op.name for op in OPS if not op.geometric)


def colour_branches() -> list[tuple[Callable[[Any, Any], Any], list[int]]]:
    """The distinct DALI expressions of the colour ops, each with the op codes (index in
    :data:`OPS` + 1) that run it, in table order: one branch each in the GPU graph."""
    branches: dict[Callable, list[int]] = {}
    for code, op in enumerate(OPS, start=1):
        if not op.geometric:
            branches.setdefault(op.dali, []).append(code)
    return list(branches.items())


# ----------------------------------------------------------------------------------- draws
@dataclass
class RandAugmentParams:
    """Per-sample parameters of one batch, ready to feed DALI.

    ``matrix``: (N, 2, 3) float32 inverse affine maps (output pixel -> input pixel, pixel
    centres at i + 0.5), meaningful where ``geometric`` is True. ``colour``: (N, 2) int32 codes
    of the colour ops in application order (index in :data:`OPS` + 1; 0 = nothing in this
    slot). ``value``: (N, 2, NUM_ARGS) float32, each slot's arguments (the row's ``arg``,
    zero-padded). ``magnitude``: (N,) float32, the stage's magnitude m (what was asked for,
    before noise).
    """

    matrix: np.ndarray
    geometric: np.ndarray
    colour: np.ndarray
    value: np.ndarray
    magnitude: np.ndarray


def sample_randaugment(rng: np.random.Generator, magnitudes: np.ndarray, size: tuple[int, int],
                       enabled: bool = True) -> RandAugmentParams:
    """Draw one batch's RandAugment parameters (``magnitudes``: the stage's m per sample).

    The generator is called in a fixed order (op indices, applied flags, magnitudes, signs),
    so the same seed gives the same draws, and a resumed run continues the same sequence.
    """
    n = len(magnitudes)
    matrix = np.tile(np.eye(3), (n, 1, 1))
    geometric = np.zeros(n, dtype=bool)
    colour = np.zeros((n, OPS_PER_IMAGE), dtype=np.int32)
    value = np.zeros((n, OPS_PER_IMAGE, NUM_ARGS), dtype=np.float32)
    if enabled:
        ops = rng.integers(0, len(OPS), size=(n, OPS_PER_IMAGE))
        applied = rng.random((n, OPS_PER_IMAGE)) < PROB
        mags = np.clip(rng.normal(magnitudes[:, None], MAG_STD, size=(n, OPS_PER_IMAGE)), 0.0, MAG_MAX)
        signs = np.where(rng.random((n, OPS_PER_IMAGE)) < 0.5, -1.0, 1.0)
        for i, row in enumerate(applied.tolist()):  # lists: cheaper than a NumPy search per sample
            slot = 0
            for k in (k for k, on in enumerate(row) if on):
                op = OPS[ops[i, k]]
                arg = op.arg(float(mags[i, k] / MAG_MAX), signs[i, k], size)
                if op.geometric:
                    # op k applied after the earlier ones: its inverse map is applied first
                    matrix[i] = matrix[i] @ arg
                    geometric[i] = True
                else:
                    colour[i, slot] = ops[i, k] + 1
                    value[i, slot, :len(arg)] = arg
                    slot += 1
    return RandAugmentParams(matrix[:, :2, :].astype(np.float32), geometric, colour, value,
                             np.asarray(magnitudes, dtype=np.float32))


def apply_colour_ops_pil(image: np.ndarray, codes: Sequence[int], args: np.ndarray) -> np.ndarray:
    """One HWC uint8 image's colour ops (``codes``, ``args``: its rows of ``colour`` and
    ``value``), in slot order, with Pillow as timm applies them."""
    if not np.any(codes):
        return image
    img = Image.fromarray(image)
    for code, op_args in zip(codes, args):
        if code > 0:
            img = OPS[int(code) - 1].pil(img, op_args)
    return np.asarray(img)
