"""The embedded demo set: a deterministic ImageFolder of small JPEGs (no download), with class
evidence in both low frequencies (background hue, a blob's hue) and high ones (stripes), so a
curriculum that starts at low bands has something to learn first and something left for later.
Equal :class:`DemoSpec` give byte-identical files; :func:`demo_dataset` writes it once into the
cache folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from etpp_dali.data.scan import DataError, cache_dir
from etpp_dali.util.files import atomic_path

__all__ = ["DemoSpec", "demo_dataset", "write_demo_dataset"]


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the embedded demo set; equal specs give byte-identical files."""

    classes: int = 10            # (layout, texture) pairs; see _demo_image
    train_per_class: int = 100
    val_per_class: int = 25
    size: int = 72               # pixels a side
    seed: int = 0                # with the split and the class, seeds each class's generator
    quality: int = 90            # JPEG quality

    def key(self) -> str:
        return (f"demo-c{self.classes}-t{self.train_per_class}-v{self.val_per_class}"
                f"-s{self.size}-r{self.seed}-q{self.quality}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in 0..1; returns ``(..., 3)``."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(np.broadcast(h, s, v).shape + (3,))
    for k, (r, g, b) in enumerate(choices):
        mask = i == k
        out[..., 0] = np.where(mask, r, out[..., 0])
        out[..., 1] = np.where(mask, g, out[..., 1])
        out[..., 2] = np.where(mask, b, out[..., 2])
    return out


def _demo_image(label: int, spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size x 3`` uint8 image of class ``label``.

    Class = (layout, texture): the layout (a soft blob of one hue on a background of another,
    both low-frequency) is shared by ``textures`` classes, and the texture (fine stripes,
    horizontal or vertical, a period of 2.5-4 px, faint: high frequency) tells them apart. A model that
    sees only low frequencies can tell the layout but not the texture, so a curriculum from low to
    full band is meaningful; random jitter, distractor blobs and noise keep it from being trivial.
    """
    textures = 2
    layouts = max(1, -(-spec.classes // textures))
    layout, texture = label // textures, label % textures
    s = spec.size
    yy, xx = np.mgrid[0:s, 0:s] / s
    # low frequencies: background hue gradient and the class blob, with jitter
    hue_bg = (layout / layouts + 0.5 + rng.normal(0, 0.07)) % 1.0
    hue_blob = (layout / layouts + rng.normal(0, 0.07)) % 1.0
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    bg = _hsv_to_rgb(np.full_like(xx, hue_bg), np.full_like(xx, 0.45), 0.55 + 0.25 * ramp)
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    radius = rng.uniform(0.18, 0.3)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
    fg = _hsv_to_rgb(np.full_like(xx, hue_blob), np.full_like(xx, 0.8), np.full_like(xx, 0.85))
    img = bg * (1 - blob) + fg * blob
    # a distractor blob of a random hue, so colour alone is not a perfect cue
    dy, dx = rng.uniform(0.1, 0.9, size=2)
    d = np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * rng.uniform(0.06, 0.12) ** 2))[..., None]
    img = img * (1 - 0.6 * d) + 0.6 * d * _hsv_to_rgb(np.array(rng.uniform()), np.array(0.7), np.array(0.8))
    # high frequencies: fine stripes whose orientation is the texture id (flip-invariant)
    period = rng.uniform(2.5, 4.0)
    coord = (yy if texture == 0 else xx) * s
    stripes = np.sin(2 * np.pi * coord / period + rng.uniform(0, 2 * np.pi))
    img = img + rng.uniform(0.04, 0.1) * stripes[..., None]
    img = img + rng.normal(0, 0.07, size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_demo_dataset(out: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo set as an ImageFolder of JPEGs (``train/`` and ``val/``) under ``out``.

    Deterministic: the same spec gives the same bytes. Written into a temporary folder and
    renamed, so an interrupted run never leaves a half set behind.
    """
    out = Path(out)
    if spec.classes < 2 or spec.train_per_class < 1 or spec.val_per_class < 0 or spec.size < 16:
        raise DataError("demo set: need --classes >= 2, --train-per-class >= 1, "
                        "--val-per-class >= 0 and --size >= 16")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; choose a new folder")
    with atomic_path(out) as tmp:  # a folder: renamed over the (absent or empty) target at the end
        for split, per_class, offset in (("train", spec.train_per_class, 0), ("val", spec.val_per_class, 1)):
            for label in range(spec.classes):
                folder = tmp / split / f"class_{label:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                # one generator per (split, class): adding classes never changes existing images
                rng = np.random.default_rng([spec.seed, offset, label])
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(_demo_image(label, spec, rng)).save(buf, format="JPEG", quality=spec.quality)
                    (folder / f"{split}_{label:02d}_{i:05d}.jpg").write_bytes(buf.getvalue())
    return out


def demo_dataset(spec: DemoSpec = DemoSpec()) -> Path:
    """The demo set in the cache folder, generated on first use."""
    path = cache_dir() / spec.key()
    if not (path / "train").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_demo_dataset(path, spec)
        except OSError:
            if not (path / "train").is_dir():  # another process may have won the rename
                raise
    return path

