import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import file_list, image_folder, open_source, webdataset


def demo_files(demo_root: Path, split="train"):
    return sorted((demo_root / split).rglob("*.jpg"))


def test_image_folder_and_split_selection(demo_root, hymenoptera):
    train = open_source(demo_root)
    assert len(train) == 4 * 24 and train.classes == [f"class_{i:02d}" for i in range(4)]
    val = open_source(demo_root, "val", classes=train.classes)
    assert len(val) == 4 * 6
    assert np.array_equal(np.bincount(val.labels), [6] * 4)
    assert train.read(0)[:2].tobytes() == b"\xff\xd8"
    hym = open_source(hymenoptera)
    assert len(hym) == 244 and len(hym.bad) == 1 and "imageNotFound.gif" in hym.report_bad()
    assert hym.sizes.shape == (244, 2)


def test_val_class_missing_from_train_is_an_error(tmp_path, demo_root):
    root = tmp_path / "d"
    shutil.copytree(demo_root, root)
    shutil.copytree(root / "val" / "class_00", root / "val" / "zebra")
    with pytest.raises(DataError, match="zebra.*not in train/"):
        open_source(root, "val", classes=open_source(root).classes)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="no such path"):
        open_source(tmp_path / "nothing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no decodable image"):
        image_folder(tmp_path / "empty")
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        open_source(tmp_path / "x")
    with pytest.raises(DataError, match="has no val/"):
        open_source(tmp_path / "empty", "val")


def test_file_list(tmp_path, demo_root):
    files = demo_files(demo_root)[:5]
    lines = [f"{f} {i}" for i, f in enumerate(files)] + ["# a comment", "", f"{tmp_path / 'gone.jpg'} 1"]
    (tmp_path / "list.txt").write_text("\n".join(lines))
    src = file_list(tmp_path / "list.txt")
    assert len(src) == 5 and list(src.labels) == [0, 1, 2, 3, 4]
    assert "gone.jpg: missing file" in src.report_bad()
    (tmp_path / "bad.txt").write_text(f"{files[0]} cat\n")
    with pytest.raises(DataError, match=r"bad.txt:1: .* is not '<path> <label>'"):
        file_list(tmp_path / "bad.txt")


def write_shard(path: Path, items):
    with tarfile.open(path, "w") as tar:
        for key, data, label in items:
            for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", None if label is None else str(label).encode())):
                if payload is None:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards(tmp_path, demo_root):
    files = demo_files(demo_root)
    write_shard(tmp_path / "a-000.tar", [(f"s{i}", f.read_bytes(), i % 4) for i, f in enumerate(files[:6])])
    write_shard(tmp_path / "a-001.tar", [(f"t{i}", f.read_bytes(), 1) for i, f in enumerate(files[6:9])]
                + [("broken", b"not a jpeg", 2), ("nolabel", files[0].read_bytes(), None)])
    src = webdataset(str(tmp_path / "a-*.tar"))
    assert len(src) == 9
    assert sorted(b.reason for b in src.bad) == ["no .cls label member", "not an image (unrecognised content)"]
    assert src.read(0).tobytes() == files[0].read_bytes()
    assert open_source(tmp_path).name == str(tmp_path)  # a folder of shards
    again = webdataset([tmp_path / "a-000.tar", tmp_path / "a-001.tar"])  # from the index cache
    assert [r.path for r in again.records] == [r.path for r in src.records]
    with pytest.raises(DataError, match="matches no .tar shard"):
        webdataset(str(tmp_path / "b-*.tar"))
