import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import file_list, image_folder, open_source, webdataset
from etpp_dali.data.splits import balanced_subset, holdout_indices, holdout_split


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


# ------------------------------------------------------------------- class-balanced draws
def test_holdout_is_class_balanced_seeded_and_keeps_every_class():
    labels = np.repeat(np.arange(4), [20, 10, 2, 1])  # the last class has one image
    kept, held = holdout_indices(labels, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))  # a partition
    assert list(np.bincount(labels[held], minlength=4)) == [4, 2, 1, 0]  # round(0.2 n), at least 1, never all
    again = holdout_indices(labels, 0.2, seed=3)
    assert np.array_equal(again[0], kept) and np.array_equal(again[1], held)
    assert not np.array_equal(holdout_indices(labels, 0.2, seed=4)[1], held)
    _, most = holdout_indices(labels, 0.9, seed=3)  # a class of two keeps one image even at 0.9
    assert list(np.bincount(labels[most], minlength=4)) == [18, 9, 1, 0]


def test_balanced_subset_draws_from_the_pool_only():
    labels = np.repeat(np.arange(3), 12)
    kept, held = holdout_indices(labels, 0.25, seed=0)
    subset = balanced_subset(labels, kept, 0.5, seed=0)
    assert not set(subset) & set(held) and set(subset) <= set(kept)
    assert list(np.bincount(labels[subset])) == [4, 4, 4]  # half of the 9 a class kept, rounded
    assert np.array_equal(subset, np.sort(subset))
    assert np.array_equal(balanced_subset(labels, kept, 0.5, seed=0), subset)


def test_holdout_split_of_a_source_keeps_members_and_reports_bad_files_with_train(tmp_path, demo_root):
    files = demo_files(demo_root)[:12]
    write_shard(tmp_path / "s.tar", [(f"k{i}", f.read_bytes(), i % 3) for i, f in enumerate(files)]
                + [("broken", b"not a jpeg", 0)])
    src = webdataset(tmp_path / "s.tar")
    train, val = holdout_split(src, 0.25, seed=1)
    kept, held = holdout_indices(src.labels, 0.25, seed=1)
    assert [r.path for r in val.records] == [src.records[i].path for i in held]
    assert [r.path for r in train.records] == [src.records[i].path for i in kept]
    assert list(val.members) == [src.members[i] for i in held] and list(train.members) == [src.members[i] for i in kept]
    assert train.bad == src.bad and len(train.bad) == 1 and val.bad == []
    assert val.read(0).tobytes() == src.read(int(held[0])).tobytes()
