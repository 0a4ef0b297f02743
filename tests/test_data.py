import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from etpp_dali.data.demo import DemoSpec, write_demo_dataset
from etpp_dali.data.scan import DataError, inspect_image, scan_dataset


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_set_is_deterministic_and_balanced(tmp_path):
    spec = DemoSpec(classes=3, train_per_class=5, val_per_class=2, size=32, seed=7)
    a = write_demo_dataset(tmp_path / "a", spec)
    b = write_demo_dataset(tmp_path / "b", spec)
    assert digest(a) == digest(b)
    c = write_demo_dataset(tmp_path / "c", DemoSpec(classes=3, train_per_class=5, val_per_class=2, size=32, seed=8))
    assert digest(a) != digest(c)
    for split, n in (("train", 5), ("val", 2)):
        counts = [len(list((a / split / d).iterdir())) for d in sorted(p.name for p in (a / split).iterdir())]
        assert counts == [n] * 3
    with Image.open(next((a / "train" / "class_00").iterdir())) as im:
        assert im.format == "JPEG" and im.size == (32, 32)


def test_demo_set_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        write_demo_dataset(tmp_path / "x", DemoSpec(classes=2, train_per_class=1, val_per_class=1, size=16))
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_demo_classes_carry_low_and_high_frequency_evidence(tmp_path):
    """Pairs of classes share the low-frequency layout and differ only in the stripes' orientation."""
    root = write_demo_dataset(tmp_path / "d", DemoSpec(classes=4, train_per_class=12, val_per_class=0, size=48))

    def load(c):
        return np.stack([np.asarray(Image.open(p), dtype=np.float64)
                         for p in sorted((root / "train" / f"class_{c:02d}").iterdir())])

    imgs = {c: load(c) for c in range(4)}
    mean_colour = {c: imgs[c].mean(axis=(0, 1, 2)) for c in imgs}
    # low frequencies: class 0/1 share a layout, 2/3 another; colours differ across layouts
    assert np.abs(mean_colour[0] - mean_colour[1]).max() < np.abs(mean_colour[0] - mean_colour[2]).max()
    # high frequencies: energy of vertical vs horizontal differences tells 0 from 1
    def stripe_axis(x):
        g = x.mean(axis=-1)
        return np.abs(np.diff(g, axis=1)).mean() - np.abs(np.diff(g, axis=2)).mean()
    assert stripe_axis(imgs[0]) * stripe_axis(imgs[1]) < 0


def test_check_data_on_hymenoptera_reports_exactly_the_gif(hymenoptera):
    scan = scan_dataset(hymenoptera)
    problems = scan.problems()
    assert len(problems) == 1 and "imageNotFound.gif" in problems[0] and "GIF" in problems[0]
    assert len(scan.train) == 244 and len(scan.val) == 153
    assert scan.classes == ["ants", "bees"]
    # cached second scan gives the same answer
    assert scan_dataset(hymenoptera).problems() == problems


def make_bad_files(root: Path, source: Path) -> None:
    good = next(source.glob("*.jpg"))
    d = root / "train" / "cats"
    d.mkdir(parents=True)
    shutil.copy(good, d / "ok.jpg")
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image at all")
    Image.new("RGB", (8, 8)).save(d / "anim.gif")
    (root / "train" / "dogs").mkdir()  # empty class
    (root / "val" / "cats").mkdir(parents=True)
    shutil.copy(good, root / "val" / "cats" / "v.jpg")
    (root / "val" / "birds").mkdir()
    shutil.copy(good, root / "val" / "birds" / "b.jpg")


def test_scan_reports_each_kind_of_bad_file(tmp_path, demo_root):
    make_bad_files(tmp_path, demo_root / "train" / "class_00")
    scan = scan_dataset(tmp_path)
    text = "\n".join(scan.problems())
    assert "truncated.jpg: truncated JPEG" in text
    assert "zero.jpg: zero bytes" in text
    assert "text.jpg: not an image" in text
    assert "anim.gif: GIF is a format the decoders do not take" in text
    assert "dogs: empty class folder" in text
    assert "class 'birds' is in val/ but not in train/" in text
    assert [Path(r.path).name for r in scan.train.records] == ["ok.jpg"]
    # a file fixed in place (new size and mtime) is re-inspected, not served from the cache
    good = next((demo_root / "train" / "class_00").glob("*.jpg"))
    shutil.copy(good, tmp_path / "train" / "cats" / "truncated.jpg")
    assert "truncated.jpg" not in "\n".join(scan_dataset(tmp_path).problems())


def test_inspect_image_and_missing_paths(tmp_path, demo_root):
    fmt, w, h = inspect_image(next((demo_root / "train" / "class_01").iterdir()))
    assert (fmt, w, h) == ("JPEG", 48, 48)
    with pytest.raises(DataError, match="no such folder"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "onlyval" / "val" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/"):
        scan_dataset(tmp_path / "onlyval")


def test_png_checksums_and_deep_decode_catch_damage_inside_the_file(tmp_path, demo_root):
    rng = np.random.default_rng(0)
    png = tmp_path / "train" / "a" / "damaged.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(png)
    data = bytearray(png.read_bytes())
    data[len(data) // 2: len(data) // 2 + 200] = bytes(200)  # IDAT damaged, IEND intact
    png.write_bytes(bytes(data))
    tiff = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tiff, format="TIFF")
    cut = tmp_path / "train" / "a" / "cut.tif"
    cut.write_bytes(tiff.getvalue()[: int(len(tiff.getvalue()) * 0.7)])  # header fine, pixels cut short
    shallow = {Path(b.path).name: b.reason for b in scan_dataset(tmp_path).train.bad}
    assert "damaged image data" in shallow["damaged.png"] and "cut.tif" not in shallow
    deep = {Path(b.path).name: b.reason for b in scan_dataset(tmp_path, deep=True).train.bad}
    assert "damaged image data" in deep["cut.tif"]
    with pytest.raises(DataError, match="damaged image data"):
        inspect_image(cut.read_bytes(), deep=True)


def test_a_header_claiming_a_huge_image_is_a_bad_file_not_a_crash(tmp_path, monkeypatch):
    # Pillow refuses images above twice MAX_IMAGE_PIXELS with DecompressionBombError; a lowered
    # limit makes an ordinary JPEG trip it without writing a huge file
    path = tmp_path / "bomb.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)
    with pytest.raises(DataError, match="too large to decode safely"):
        inspect_image(path)
