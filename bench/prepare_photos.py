"""Lay out a folder of class sub-folders of photos as the ImageFolder the search benchmark uses:
every image resized so its shorter side is SIZE px (JPEG, quality 90), then split per class into
train/ and val/ with a fixed seed (VAL_SHARE of each class to val/), after keeping at most
PER_CLASS images of each class (a seeded draw).

Usage: python bench/prepare_photos.py SRC DST [--size 72] [--val-share 0.2] [--per-class N] [--seed 0]
SRC holds one folder per class, at any depth below it (e.g. TensorFlow's flower_photos, whose
train/ and val/ folders of one public copy are merged here and split again).
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image

SUFFIXES = {".jpg", ".jpeg", ".png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--size", type=int, default=72)
    parser.add_argument("--val-share", type=float, default=0.2)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    by_class: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.src.rglob("*")):
        if path.suffix.lower() in SUFFIXES:
            by_class[path.parent.name].append(path)
    rng = random.Random(args.seed)
    for name, files in sorted(by_class.items()):
        files = sorted(files)
        rng.shuffle(files)
        files = files[:args.per_class]
        n_val = round(args.val_share * len(files))
        for i, path in enumerate(files):
            split = "val" if i < n_val else "train"
            out = args.dst / split / name / f"{path.stem}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                image = image.convert("RGB")
                scale = args.size / min(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.BICUBIC)
                image.save(out, quality=90)
        print(f"{name}: {len(files) - n_val} train, {n_val} val")


if __name__ == "__main__":
    main()
