"""The training feed: batches read into recycled buffers, made ahead on worker threads, and
the same batches, byte for byte and draw for draw, as the feed that read one file at a time."""

import os
import threading

import numpy as np
import pytest
import torch
from tar_shards import write_shard

from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.data.reads import BufferPool, read_batch
from etpp_dali.data.records import ImageRecord
from etpp_dali.data.sources import Source, file_list, image_folder, webdataset
from etpp_dali.loader.feeds import PipelineConfig, make_train_batch
from etpp_dali.loader.loaders import CurriculumLoader, LoaderSettings, ValidationLoader
from etpp_dali.loader.plans import EpochSteps, Feed, TrainPlan, ValPlan


@pytest.fixture(scope="module")
def sources(demo_root, unique_list, tmp_path_factory):
    files = sorted((demo_root / "train").rglob("*.jpg"))[:20]
    shard = write_shard(tmp_path_factory.mktemp("shards") / "s-000.tar",
                        [(f"k{i:03d}", f.read_bytes(), i % 3) for i, f in enumerate(files)])
    return {"folder": image_folder(demo_root / "train"), "list": file_list(unique_list), "shard": webdataset(shard)}


@pytest.mark.parametrize("kind", ["folder", "list", "shard"])
def test_a_batch_read_gives_the_bytes_of_one_read_per_file(sources, kind):
    src = sources[kind]
    idx = np.random.default_rng(0).permutation(len(src))[:13]
    pool = BufferPool()
    views, buffer = src.read_batch(idx, pool)
    assert [v.tobytes() for v in views] == [src.read(int(i)).tobytes() for i in idx]
    assert all(v.base is buffer or v.base is buffer.base or np.shares_memory(v, buffer) for v in views)
    pool.give(buffer)
    again, reused = src.read_batch(idx[:5], pool)
    assert reused is buffer and len(pool) == 0  # a free buffer that fits is taken, not a new one
    assert [v.tobytes() for v in again] == [src.read(int(i)).tobytes() for i in idx[:5]]


def test_a_file_that_shrank_comes_out_short_and_a_missing_one_raises(tmp_path, demo_root):
    files = sorted((demo_root / "train").rglob("*.jpg"))[:3]
    copies = []
    for i, f in enumerate(files):
        copies.append(tmp_path / f"{i}.jpg")
        copies[-1].write_bytes(f.read_bytes())
    src = Source("t", ["a"], [ImageRecord(str(p), 0, 48, 48, "JPEG") for p in copies])
    pool = BufferPool()
    views, _ = read_batch(src.table, [0, 1, 2], pool)
    assert [len(v) for v in views] == [p.stat().st_size for p in copies]
    copies[2].unlink()
    with pytest.raises(FileNotFoundError):
        read_batch(src.table, [0, 2], pool)


def schedule():
    return Curriculum([StageSpec(16, 0.0, 0.5), StageSpec(32, 9.0, 0.5)], budget=4, resolution=32, split="epochs")


def one_file_at_a_time(plan, start):
    """The batches as the feed made them before batches were read together: a read per file,
    the draws from the generator of (seed, epoch, step, rank)."""
    epoch, step = start
    while epoch < plan.curriculum.total_epochs:
        stage, order = plan.curriculum.stage_at(epoch), plan.epoch_order(epoch)
        for s in range(step, plan.batches_in_epoch(epoch)):
            idx = plan.batch_indices((epoch, s), order)
            rng = np.random.default_rng([plan.seed, epoch, s, plan.shard_id])
            batch = make_train_batch([plan.source.read(int(i)) for i in idx], plan.source.labels[idx],
                                     plan.source.sizes[idx], band=stage.band, magnitude=stage.magnitude,
                                     epoch=epoch, step=s, rng=rng, cfg=plan.cfg)
            yield (epoch, s), batch.as_feed(plan.cfg.randaugment)
        epoch, step = epoch + 1, 0


def drain(feed):
    out = []
    while True:
        try:
            values = feed()
        except StopIteration:
            return out
        # copy now: a buffer is recycled a few calls later, as DALI has copied it by then
        out.append((feed.produced[-1], tuple([v.copy() for v in x] if isinstance(x, list) else x for x in values)))


def same_values(a, b):
    return all(all(np.array_equal(u, v) for u, v in zip(x, y)) and len(x) == len(y) if isinstance(x, list)
               else np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["folder", "shard"])
@pytest.mark.parametrize("threads", [0, 1, 3])
def test_the_feed_makes_the_batches_of_one_read_per_file_on_any_number_of_threads(sources, kind, threads):
    src = sources[kind]
    cur = schedule()
    plan = TrainPlan(src, EpochSteps.of_shard(cur, 4, src, 2), PipelineConfig(resolution=32, batch_size=4),
                     seed=5, shard_id=1, num_shards=2)
    plan.leave_out(3, "test")  # an excluded file is replaced the same way in both
    start = (1, 2)  # a resume in the middle of an epoch, across a stage change
    expected = list(one_file_at_a_time(plan, start))
    got = drain(Feed(plan, start, threads))
    assert [p for p, _ in got] == [p for p, _ in expected] and len(got) >= 7
    assert all(same_values(a, b) for (_, a), (_, b) in zip(got, expected))


def test_validation_batches_are_the_same_on_threads(sources):
    src = sources["folder"]
    plan = ValPlan(src, np.arange(0, len(src), 3), 5, PipelineConfig(resolution=32, batch_size=5))
    serial, threaded = drain(Feed(plan, 0, 0)), drain(Feed(plan, 0, 2))
    assert len(serial) == len(plan) and [p for p, _ in serial] == [p for p, _ in threaded]
    assert all(same_values(a, b) for (_, a), (_, b) in zip(serial, threaded))


def test_a_closed_feed_stops_its_threads_and_buffers_are_recycled(sources):
    src = sources["folder"]
    cur = schedule()
    plan = TrainPlan(src, EpochSteps.of_shard(cur, 4, src, 1), PipelineConfig(resolution=32, batch_size=4),
                     seed=0, shard_id=0, num_shards=1)
    feed = Feed(plan, (0, 0), 2)
    for _ in range(12):
        feed()
    assert len({id(b) for b in feed._handed}) == len(feed._handed) <= 2  # the rest went back to the pool
    feed.close()
    feed.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="this feed was closed"):
        feed()
    alive = [t for t in threading.enumerate() if t.name.startswith("etpp-feed")]
    for t in alive:
        t.join(5)
    assert not any(t.is_alive() for t in alive)


def test_loader_batches_do_not_depend_on_feed_threads(sources):
    """Through the real pipeline (whose external source copies each batch as it takes it), with
    the buffers recycled (tar shards: the feed reads the bytes): the same tensors with the feed on
    the caller's thread and on three."""
    cur = schedule()
    unique_list = sources["shard"]
    runs = []
    for threads in (0, 3):
        loader = CurriculumLoader(unique_list, cur, 8, device="cpu", num_threads=1, prefetch=1, seed=2,
                                  feed_threads=threads)
        epochs = []
        for e in range(cur.total_epochs):
            loader.set_epoch(e)
            epochs.append([(x.clone(), y.clone()) for x, y in loader])
        loader.close()
        runs.append(epochs)
    assert [len(e) for e in runs[0]] == [len(e) for e in runs[1]] and len(runs[0][0]) == 3
    assert all(torch.equal(x, u) and torch.equal(y, v)
               for a, b in zip(*runs) for (x, y), (u, v) in zip(a, b))


def test_feed_threads_setting():
    assert LoaderSettings(batch_size=8, feed_threads=3).feed_workers(True) == 3
    default = LoaderSettings(batch_size=8)
    assert default.feed_workers(True) == 0 and default.feed_workers(False) == 1
    with pytest.raises(ValueError, match="feed_threads = -1 is invalid"):
        LoaderSettings(batch_size=8, feed_threads=-1)


def test_paths_for_a_graph_that_reads_its_files(sources):
    src = sources["folder"]
    idx = [5, 0, 17]
    assert [p.tobytes() for p in src.path_batch(idx)] == [os.fsencode(src.path(i)) for i in idx]
    assert src.reads_files and not sources["shard"].reads_files
    with pytest.raises(ValueError, match="tar members have no path"):
        sources["shard"].path_batch([0])


def loader_epochs(data, cur, **options):
    train = CurriculumLoader(data, cur, 8, device="cpu", num_threads=1, seed=4, **options)
    epochs = []
    for e in range(cur.total_epochs):
        train.set_epoch(e)
        epochs.append([(x.clone(), y.clone()) for x, y in train])
    train.close()
    return epochs, train


def test_the_graph_reading_files_gives_the_batches_of_the_feed_reading_them(unique_list, demo_root, monkeypatch):
    """The files read by DALI (paths fed) or by the feed (bytes fed): the same training and
    validation batches."""
    cur = schedule()
    by_graph, loader = loader_epochs(unique_list, cur)
    val_graph = [(x, y) for x, y in ValidationLoader(demo_root, 32, 7, device="cpu", num_threads=1)]
    assert loader.cfg.read_files
    monkeypatch.setattr(Source, "reads_files", property(lambda self: False))
    by_feed, loader = loader_epochs(unique_list, cur)
    val_feed = [(x, y) for x, y in ValidationLoader(demo_root, 32, 7, device="cpu", num_threads=1)]
    assert not loader.cfg.read_files
    assert [len(e) for e in by_graph] == [len(e) for e in by_feed] and len(val_graph) == len(val_feed) == 4
    assert all(torch.equal(x, u) and torch.equal(y, v)
               for a, b in zip(by_graph, by_feed) for (x, y), (u, v) in zip(a, b))
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(val_graph, val_feed))


def test_a_file_deleted_after_the_scan_is_left_out_once(demo_root, tmp_path, capfd):
    files = sorted((demo_root / "train").rglob("*.jpg"))[:24]
    (tmp_path / "a").mkdir()
    for f in files:
        (tmp_path / "a" / f.name).write_bytes(f.read_bytes())
    src = image_folder(tmp_path)
    gone = src.path(5)
    os.unlink(gone)
    cur = schedule()
    epochs, loader = loader_epochs(src, cur)
    assert [sum(len(y) for _, y in e) for e in epochs] == [24] * cur.total_epochs
    assert list(loader.excluded) == [5]
    err = capfd.readouterr().err
    assert err.count("left out") == 1 and f"left out {gone}: could not be opened" in err
