"""The compact index: the same images, labels and order as a plain walk; fast probes that agree with
Pillow; damaged and stale indexes rebuilt; incremental rescans; one scan for many processes."""

import io
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tar_shards import write_shard

from etpp_dali.data import folders, headers, parallel, probe, shards
from etpp_dali.data.index import DamagedIndex, read_index, write_index
from etpp_dali.data.lock import index_lock
from etpp_dali.data.records import DataError, ImageRecord
from etpp_dali.data.scan import scan_dataset, scan_split
from etpp_dali.data.sources import Source, file_list, image_folder, open_source, webdataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ETPP_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def count_probes(monkeypatch):
    """The paths probed, in order."""
    seen: list[str] = []
    real = parallel.probe_batch

    def counting(pieces, level, mapper=None):
        seen.extend(prefix + name for prefix, names in pieces for name in names)
        return real(pieces, level, mapper)

    monkeypatch.setattr(parallel, "probe_batch", counting)
    return seen


def reference_walk(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of every file in the order the scan of earlier releases listed them."""
    out = []
    for label, cls in enumerate(classes):
        if not (root / cls).is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [(str(Path(dirpath) / n), label) for n in sorted(filenames) if not n.startswith(".")]
    return out


def age(*roots: Path, seconds: float = 60) -> None:
    """Date the files and folders under ``roots`` back, so that no scan waits for them to settle."""
    then = int((os.path.getmtime(roots[0]) - seconds) * 1e9)
    for root in roots:
        for p in [root, *root.rglob("*")]:
            os.utime(p, ns=(then, then), follow_symlinks=False)


def photos(hymenoptera: Path, n: int) -> list[Path]:
    return sorted((hymenoptera / "train").rglob("*.jpg"))[:n]


def make_tree(root: Path, hymenoptera: Path) -> Path:
    """Classes with nested folders, dot names, a linked folder (not followed), a bad file."""
    src = photos(hymenoptera, 12)
    for c, cls in enumerate(["b_cls", "a_cls", "c_cls"]):
        for k in range(3):
            (root / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(src[3 * c + k], root / cls / f"img{k}.jpg")
    (root / "a_cls" / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(src[9], root / "a_cls" / "sub" / "z.jpg")
    shutil.copy(src[10], root / "a_cls" / "sub" / "deeper" / "y.jpg")
    shutil.copy(src[11], root / "a_cls" / "sub" / ".hidden.jpg")
    (root / "a_cls" / ".dot").mkdir()
    shutil.copy(src[11], root / "a_cls" / ".dot" / "x.jpg")
    os.symlink(root / "c_cls", root / "b_cls" / "linked")
    (root / "b_cls" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_order_labels_and_paths_match_the_walk_of_earlier_releases(tmp_path, hymenoptera):
    root = make_tree(tmp_path / "t", hymenoptera)
    src = image_folder(root)
    assert src.classes == ["a_cls", "b_cls", "c_cls"]
    expected = [(p, lab) for p, lab in reference_walk(root, src.classes) if not p.endswith("broken.jpg")]
    assert [(r.path, r.label) for r in src.records] == expected
    assert [src.path(i) for i in range(len(src))] == [p for p, _ in expected]
    assert list(src.labels) == [lab for _, lab in expected] and src.labels.dtype == np.int64
    assert [str(b.path).endswith("broken.jpg") for b in src.bad] == [True]  # listed once
    for i in range(len(src)):
        with Image.open(src.path(i)) as im:
            assert tuple(src.sizes[i]) == (im.height, im.width)
        assert src.read(i).tobytes() == Path(src.path(i)).read_bytes()
    again = image_folder(root)  # from the index: the same answer
    assert [r.path for r in again.records] == [r.path for r in src.records]
    assert np.array_equal(again.sizes, src.sizes) and [str(b) for b in again.bad] == [str(b) for b in src.bad]
    # a val split takes train's class order, whatever it holds
    val = image_folder(root, ["c_cls", "a_cls", "b_cls"])
    assert set(val.labels[[r.path.startswith(str(root / "c_cls")) for r in val.records]]) == {0}


def test_source_arrays_are_views_of_the_mapped_index(tmp_path, hymenoptera):
    root = make_tree(tmp_path / "t", hymenoptera)
    image_folder(root)
    src = image_folder(root)  # mapped, not built
    assert src.index is not None and src.index.path is not None
    for a in (src.labels, src.sizes, src.table.name_start, src.table.names):
        assert not a.flags.writeable and not a.flags.owndata  # no private copy
    old = Source("x", ["a"], [ImageRecord("/p/a.jpg", 0, 5, 4, "JPEG")])  # the constructor of earlier releases
    assert old.records[0] == ImageRecord("/p/a.jpg", 0, 5, 4, "JPEG") and old.sizes.tolist() == [[4, 5]]
    sub = src.subset([2, 0])
    assert [r.path for r in sub.records] == [src.path(2), src.path(0)] and sub.records[-1].path == src.path(0)


def jpeg_variants(hymenoptera: Path) -> dict[str, bytes]:
    """Well-formed and odd JPEGs the fast path must judge as Pillow does (or leave to it)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    out = {}
    for name, kwargs in {"baseline": {}, "progressive": {"progressive": True}, "gray": {},
                         "exif": {"exif": b"Exif\0\0" + bytes(9000)}, "icc": {"icc_profile": bytes(70000)},
                         "cmyk": {}}.items():
        buf = io.BytesIO()
        im = img.convert("L") if name == "gray" else img.convert("CMYK") if name == "cmyk" else img
        im.save(buf, format="JPEG", **kwargs)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    img.save(buf, format="MPO", save_all=True, append_images=[img])
    out["mpo"] = buf.getvalue()
    real = photos(hymenoptera, 1)[0].read_bytes()
    out["truncated"] = real[: len(real) // 2]
    out["no_frame"] = real[:2] + real[real.index(b"\xff\xda"):]
    out["bad_length"] = real[:4] + b"\x00\x01" + real[6:]
    out["zero"] = b""
    out["padded"] = real[:2] + b"\xff" + real[2:]
    dqt = real.index(b"\xff\xdb")
    length = int.from_bytes(real[dqt + 2:dqt + 4], "big")
    out["dqt_short"] = real[:dqt + 2] + (length - 1).to_bytes(2, "big") + real[dqt + 4:]
    out["photoshop"] = real[:2] + b"\xff\xed\x00\x12Photoshop 3.0\x008B" + real[2:]
    out["adobe_short"] = real[:2] + b"\xff\xee\x00\x07Adobe" + real[2:]
    ps = b"Photoshop 3.0\x008BIM\x03\xed"
    out["photoshop_cut"] = real[:2] + b"\xff\xed" + (2 + len(ps)).to_bytes(2, "big") + ps + real[2:]
    ps += b"\x00\x00\x00\x00\x00\x04abcd8BIM\x04\x04\x00\x00\x00\x00\x00\x02xy"
    out["photoshop_blocks"] = real[:2] + b"\xff\xed" + (2 + len(ps)).to_bytes(2, "big") + ps + real[2:]
    return out


def test_fast_probe_agrees_with_pillow(tmp_path, hymenoptera):
    files = sorted(hymenoptera.rglob("*.*"))
    for name, data in jpeg_variants(hymenoptera).items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        files.append(tmp_path / f"{name}.jpg")
    fast_paths = 0
    for f in files:
        for level in (probe.TRUST, probe.CHECK):
            fast = probe.probe_path(str(f), level)
            size = f.stat().st_size
            pil = probe._pil_verdict(lambda f=f: open(f, "rb"), size, level)
            assert fast[2:] == pil, (f, level)
            assert probe.probe_bytes(f.read_bytes(), level)[2:] == pil
        data = f.read_bytes()
        fast_paths += probe.jpeg_fast(data[:4096], len(data), probe.CHECK, lambda n, d=data: d[:n],
                                       lambda d=data: d[-4096:]) is not None
    assert fast_paths >= 396 + 8  # the photos and most variants never reach Pillow
    assert probe.probe_path(str(tmp_path / "truncated.jpg"), probe.TRUST)[2] > 0  # trust reads no end marker


def test_the_batched_walk_gives_what_probe_path_gives(tmp_path, hymenoptera):
    """Every file of a batch (photos, odd JPEGs, other formats, a folder, a missing path) gets the
    verdict, size, mtime and frame ``probe_path`` gives it; the walk decides the plain JPEGs itself."""
    files = sorted(hymenoptera.rglob("*.*"))
    for name, data in jpeg_variants(hymenoptera).items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        files.append(tmp_path / f"{name}.jpg")
    (tmp_path / "folder.jpg").mkdir()
    paths = [str(f) for f in files] + [str(tmp_path / "folder.jpg"), str(tmp_path / "missing.jpg")]
    for level in (probe.TRUST, probe.CHECK):
        one = probe.ProbeColumns.of([probe.probe_path(p, level) for p in paths])
        many = headers.probe_batch([("", paths)], level)
        by_folder = headers.probe_batch([(str(f.parent) + os.sep, [f.name]) for f in map(Path, paths)], level)
        assert all(np.array_equal(getattr(by_folder, k), getattr(many, k))
                   for k in ("size", "mtime", "code", "height", "width", "bad")) and by_folder.why == many.why
        for field in ("size", "mtime", "code", "height", "width", "bad"):
            assert np.array_equal(getattr(many, field), getattr(one, field)), (level, field)
        assert many.why == one.why and len(many.why) >= 7
    heads = np.zeros((len(paths), 4096), np.uint8)
    reads = [headers._read((None, p, memoryview(row)), True) for p, row in zip(paths, heads)]
    _, _, alone = headers._walk(heads.reshape(-1), np.arange(len(paths)) * 4096, np.array([r[0] for r in reads]),
                                np.array([r[1] for r in reads]))
    assert np.count_nonzero(~alone[:397]) >= 380  # the photos, but those with longer headers (EXIF) or Photoshop blocks
    assert getattr(headers._BUFFERS, "heads", None) is not None
    with parallel.Prober(probe.TRUST, len(paths)) as prober:  # in this process: a scan's end lets the buffer go
        assert len(prober.submit([("", paths)])()) == len(paths)
    assert getattr(headers._BUFFERS, "heads", None) is None


def test_damaged_index_files_are_rebuilt_never_trusted(tmp_path, hymenoptera, capsys):
    root = make_tree(tmp_path / "t", hymenoptera)
    first = image_folder(root)
    expected = [r.path for r in first.records]
    path = first.index.path
    good = path.read_bytes()
    body = -(-(48 + struct.unpack_from("<Q", good, 8)[0]) // 64) * 64  # the first array: the names
    damages = {"truncated": good[:-100], "magic": b"XXXXXXXX" + good[8:],
               "header": good[:60] + bytes([good[60] ^ 1]) + good[61:],
               "data": good[:body] + bytes([good[body] ^ 0xFF]) + good[body + 1:], "empty": b""}
    for what, data in damages.items():
        (tmp_path / "damaged").write_bytes(data)
        os.replace(tmp_path / "damaged", path)  # a new file: processes that map the old one keep it
        with pytest.raises(DamagedIndex):
            read_index(path)
        again = image_folder(root)
        assert [r.path for r in again.records] == expected, what
        assert path.read_bytes() != data and read_index(path).header["kind"] == "folder"
        assert "unusable" in capsys.readouterr().err


def test_write_index_round_trip_and_atomicity(tmp_path, monkeypatch):
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.zeros((0, 2), np.int32), "c": np.ones((3, 2), np.uint8)}
    write_index(tmp_path / "i.idx", {"kind": "x"}, arrays)
    back = read_index(tmp_path / "i.idx")
    assert back.header["kind"] == "x" and all(np.array_equal(back[k], v) for k, v in arrays.items())
    monkeypatch.setattr(np, "ascontiguousarray", lambda a: 1 / 0)  # a writer that dies half-way
    with pytest.raises(ZeroDivisionError):
        write_index(tmp_path / "i.idx", {"kind": "y"}, arrays)
    assert read_index(tmp_path / "i.idx").header["kind"] == "x" and os.listdir(tmp_path) == ["i.idx"]


def test_rescans_probe_only_new_or_changed_files(tmp_path, hymenoptera, count_probes, monkeypatch, capsys):
    root = make_tree(tmp_path / "t", hymenoptera)
    age(root)
    image_folder(root)
    assert len(count_probes) == 12
    count_probes.clear()
    image_folder(root)
    assert count_probes == []  # fresh: a stat per folder, no file read
    extra = photos(hymenoptera, 20)[-1]
    shutil.copy(extra, root / "c_cls" / "new.jpg")
    (root / "a_cls" / "img0.jpg").unlink()
    src = image_folder(root)
    assert set(count_probes) == {str(root / "c_cls" / "new.jpg")}  # again if it was too new to settle
    assert "folder a_cls changed" in capsys.readouterr().err  # said so
    assert [(r.path, r.label) for r in src.records] == [
        t for t in reference_walk(root, src.classes) if not t[0].endswith("broken.jpg")]
    # a bad file fixed in place comes back; a good file changed in place needs a check of every file
    count_probes.clear()
    shutil.copy(extra, root / "b_cls" / "broken.jpg")
    (root / "c_cls" / "img1.jpg").write_bytes(b"now text")
    fixed = image_folder(root)
    assert set(count_probes) == {str(root / "b_cls" / "broken.jpg")} and not fixed.bad
    scan = scan_dataset(root)  # verify_files: every file statted
    assert [Path(b.path).name for b in scan.train.bad] == ["img1.jpg"]


def test_trust_reads_headers_and_a_later_check_completes_the_index(tmp_path, hymenoptera, count_probes):
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    for k, p in enumerate(photos(hymenoptera, 3)):
        shutil.copy(p, root / "a" / f"{k}.jpg")
    data = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "0.jpg").write_bytes(data[: len(data) // 2])
    assert len(image_folder(root, trust=True)) == 3  # the truncated file passes its header
    count_probes.clear()
    checked = image_folder(root)
    assert len(checked) == 2 and "truncated JPEG" in checked.bad[0].reason and len(count_probes) == 3
    count_probes.clear()
    assert len(image_folder(root, trust=True)) == 2 and not count_probes  # checked entries serve trust too


def test_file_list_index_and_missing_files(tmp_path, hymenoptera, count_probes, monkeypatch):
    files = photos(hymenoptera, 4)
    lines = [f"{f} {i}" for i, f in enumerate(files)] + [f"{tmp_path / 'gone.jpg'} 1"]
    (tmp_path / "l.txt").write_text("\n".join(lines))
    age(tmp_path / "l.txt")
    src = file_list(tmp_path / "l.txt")
    assert [r.path for r in src.records] == [str(f) for f in files] and list(src.labels) == [0, 1, 2, 3]
    assert [str(b) for b in src.bad] == [f"{tmp_path / 'gone.jpg'}: missing file"]
    count_probes.clear()
    (tmp_path / "l.txt").write_text("\n".join(lines[1:] + [f"{files[0]} 5"]))
    again = file_list(tmp_path / "l.txt")
    assert set(count_probes) == {str(tmp_path / "gone.jpg")}  # a missing file is looked for again
    assert list(again.labels) == [1, 2, 3, 5] and len(again.classes) == 6


def test_shards_read_member_headers_only_and_reindex_only_changed_shards(tmp_path, hymenoptera, monkeypatch):
    files = photos(hymenoptera, 8)
    for s in range(2):
        part = files[4 * s:4 * s + 4]
        age(write_shard(tmp_path / f"s-{s}.tar", [(f"k{s}{i}", f.read_bytes(), i) for i, f in enumerate(part)]))
    read = []
    real = os.pread

    def counting(fd, n, offset):
        data = real(fd, n, offset)
        read.append(len(data))
        return data

    with monkeypatch.context() as m:
        m.setattr(os, "pread", counting)
        src = webdataset(str(tmp_path / "s-*.tar"))
    # a first and a last read of each image (more where a header is long), never the images whole
    assert len(src) == 8 and len(read) <= 8 * 3 and sum(read) < sum(f.stat().st_size for f in files) / 3
    assert src.read(5).tobytes() == files[5].read_bytes() and src.members[5][0].endswith("s-1.tar")
    indexed = []
    original = shards._index_shard
    monkeypatch.setattr(shards, "_index_shard", lambda p, level: indexed.append(p) or original(p, level))
    write_shard(tmp_path / "s-1.tar", [("k9", files[0].read_bytes(), 3)])
    again = webdataset(str(tmp_path / "s-*.tar"))
    assert set(indexed) == {str(tmp_path / "s-1.tar")} and len(again) == 5 and list(again.labels[-1:]) == [3]


def test_lock_waits_and_times_out_with_a_clear_message(tmp_path, monkeypatch, capsys):
    lock = tmp_path / "x.lock"
    holding = threading.Event()
    release = threading.Event()

    def holder():
        with index_lock(lock, "data"):
            holding.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    holding.wait(5)
    with pytest.raises(DataError, match="waited .* to finish indexing it"):
        with index_lock(lock, "data", timeout=0.3):
            pass
    assert "waiting for" in capsys.readouterr().err
    release.set()
    t.join()
    with index_lock(lock, "data", timeout=0.3):
        pass


def test_many_processes_scan_once(tmp_path, hymenoptera):
    """Four processes open a new data set at once: the files are read by one of them only."""
    root = tmp_path / "t"
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
        for k, p in enumerate(photos(hymenoptera, 40)[10 * c:10 * c + 10]):
            shutil.copy(p, root / f"c{c}" / f"{k}.jpg")
    age(root)  # files written just now are read twice by design (RACY_NS): count who scans, not that
    script = textwrap.dedent(f"""
        from etpp_dali.data import headers, parallel, probe
        from etpp_dali.data.sources import open_source
        n = [0]
        real = parallel.probe_batch
        def counting(pieces, level, mapper=None):
            n[0] += sum(len(names) for _, names in pieces)
            return real(pieces, level, mapper)
        parallel.probe_batch = counting
        src = open_source({str(root)!r})
        print(n[0], len(src))
    """)
    env = dict(os.environ, ETPP_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert sorted(int(o[0]) for o in outs) == [0, 0, 0, 40] and {o[1] for o in outs} == {"40"}


def test_check_data_summarises_many_problems(tmp_path, hymenoptera):
    from click.testing import CliRunner

    from etpp_dali.cli import main

    root = tmp_path / "d" / "train"
    (root / "a").mkdir(parents=True)
    shutil.copy(photos(hymenoptera, 1)[0], root / "a" / "ok.jpg")
    for k in range(25):
        (root / "a" / f"text{k:02d}.jpg").write_text("not an image")
    for k in range(5):
        (root / "a" / f"zero{k}.jpg").write_bytes(b"")
    listing = tmp_path / "problems.txt"
    res = CliRunner().invoke(main, ["check-data", str(tmp_path / "d"), "--problems", str(listing)])
    assert res.exit_code == 1
    assert "30 problem(s):" in res.output and "25  not an image" in res.output and "5  zero bytes" in res.output
    assert res.output.count("text") == 10 and "first 10:" in res.output and str(listing) in res.output
    assert len(listing.read_text().splitlines()) == 30


def test_scan_split_without_cache_writes_nothing(tmp_path, hymenoptera):
    root = make_tree(tmp_path / "t", hymenoptera)
    scan = scan_split(root, use_cache=False)
    assert len(scan) == 11 and not (tmp_path / "cache").exists()
    assert open_source(root, use_cache=False).labels.tolist() == scan.table.labels.tolist()


def test_plans_draw_the_same_batches_from_the_index_as_from_records(tmp_path, hymenoptera):
    """The loader's plans see the same images, labels and sizes, so they make the same batches
    as from the records of earlier releases (built here from a plain walk and Pillow)."""
    import pickle

    from etpp_dali.curriculum.schedule import Curriculum, StageSpec
    from etpp_dali.loader.graphs import PipelineConfig
    from etpp_dali.loader.plans import EpochSteps, TrainPlan

    root = make_tree(tmp_path / "t", hymenoptera)
    src = image_folder(root)
    records = []
    for path, label in reference_walk(root, src.classes):
        try:
            with Image.open(path) as im:
                records.append(ImageRecord(path, label, im.width, im.height, im.format))
        except OSError:
            continue  # the bad file
    reference = Source(str(root), src.classes, records)
    cur = Curriculum([StageSpec(16, 0.0, 0.5), StageSpec(32, 9.0, 0.5)], budget=2, resolution=32, split="epochs")
    cfg = PipelineConfig(resolution=32, batch_size=4)
    for source in (src, pickle.loads(pickle.dumps(src))):
        plans = [TrainPlan(s, EpochSteps.of_shard(cur, 4, s, 2), cfg, seed=3, shard_id=1, num_shards=2)
                 for s in (source, reference)]
        batches = [list(p.batches((0, 0))) for p in plans]
        assert len(batches[0]) == len(batches[1]) > 2
        for (pos_a, feed_a), (pos_b, feed_b) in zip(*batches):
            assert pos_a == pos_b and len(feed_a) == len(feed_b)
            for x, y in zip(feed_a, feed_b):
                assert all(np.array_equal(u, v) for u, v in zip(x, y)) if isinstance(x, list) else np.array_equal(x, y)


def test_worker_processes_probe_as_one_process_does(tmp_path, hymenoptera, monkeypatch):
    root = make_tree(tmp_path / "t", hymenoptera)
    age(root)
    monkeypatch.setattr(parallel, "_MIN_FOR_PROCESSES", 1)
    monkeypatch.setattr(parallel, "_BATCH", 3)
    monkeypatch.setattr(folders, "_PROBE_BATCH", 4)  # several batches, probed while later folders are listed
    forks = []
    real = parallel._start_pool
    monkeypatch.setattr(parallel, "_start_pool", lambda workers: forks.append(workers) or real(workers))
    scans = []
    for workers in ("2", "1"):
        monkeypatch.setenv("ETPP_SCAN_PROCESSES", workers)
        scans.append(scan_split(root, use_cache=False))
    forked, single = scans
    assert forks == [2]  # one pool of worker processes for all the batches of the scan
    assert [r for r in forked.records] == [r for r in single.records] and len(forked) == 11
    assert [str(b) for b in forked.bad] == [str(b) for b in single.bad] and len(forked.bad) == 1


def test_train_trust_data_reaches_the_index(tmp_path, hymenoptera):
    """``etpp train --trust-data`` (TrainConfig.trust_data) opens both splits from headers only."""
    from etpp_dali.cli import main
    from etpp_dali.train.config import TrainConfig
    from etpp_dali.train.data import _open_splits

    assert any(p.name == "trust_data" for p in main.commands["train"].params)
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        for k, p in enumerate(photos(hymenoptera, 3)):
            shutil.copy(p, root / split / "a" / f"{k}.jpg")
        data = (root / split / "a" / "0.jpg").read_bytes()
        (root / split / "a" / "0.jpg").write_bytes(data[: len(data) // 2])
    trusted = _open_splits(root, TrainConfig(data=str(root), trust_data=True))
    checked = _open_splits(root, TrainConfig(data=str(root)))
    assert [len(s) for s in trusted] == [3, 3] and [len(s) for s in checked] == [2, 2]


def test_holdout_split_takes_subsets_of_the_index(tmp_path, hymenoptera):
    from etpp_dali.train.data import holdout_split

    src = image_folder(make_tree(tmp_path / "t", hymenoptera))
    train, val = holdout_split(src, 0.3, seed=1)
    paths = [src.path(i) for i in range(len(src))]
    got = [train.path(i) for i in range(len(train))] + [val.path(i) for i in range(len(val))]
    assert sorted(got) == sorted(paths) and len(set(got)) == len(paths)
    assert set(val.labels.tolist()) == {0, 1, 2} and train.bad == src.bad and not val.bad
    for part in (train, val):
        for i in range(len(part)):
            j = paths.index(part.path(i))
            assert part.labels[i] == src.labels[j] and tuple(part.sizes[i]) == tuple(src.sizes[j])
    again = holdout_split(src, 0.3, seed=1)[1]
    assert [again.path(i) for i in range(len(again))] == [val.path(i) for i in range(len(val))]


def test_short_calls_time_many_threads_once_in_a_while(monkeypatch):
    """A worker maps many short lists (a task of a scan each): the batch timed on many threads comes
    once every ``_RECHECK`` batches of the process, not once a call (threads only contend for the
    GIL when the files are in the page cache, so that batch costs more than the others)."""
    monkeypatch.delenv("ETPP_SCAN_THREADS", raising=False)
    monkeypatch.setattr(parallel, "_RATES", {})
    monkeypatch.setattr(parallel, "_BATCHES", {})
    clock, used = [0.0], []

    def mapped(func, items, threads):  # many threads take three times as long here
        used.append(threads)
        clock[0] += len(items) * (1 if threads == 1 else 3)
        return [func(x) for x in items]

    monkeypatch.setattr(parallel, "_map_threads", mapped)
    monkeypatch.setattr(parallel.time, "perf_counter", lambda: clock[0])
    for _ in range(10):
        assert parallel.map_fastest(lambda x: 2 * x, list(range(64)), batch=8) == [2 * x for x in range(64)]
    assert len(used) == 80 and [k for k, t in enumerate(used) if t > 1] == [1, 17, 33, 49, 65]
