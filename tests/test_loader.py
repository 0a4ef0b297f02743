import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tar_shards import write_shard
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from etpp_dali import Curriculum, StageSpec
from etpp_dali.data.scan import DataError, ImageRecord
from etpp_dali.data.sources import Source, image_folder
from etpp_dali.loader.graphs import define_train_pipeline
from etpp_dali.loader.loaders import CurriculumLoader, ValidationLoader
from etpp_dali.loader.settings import LoaderSettings
from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255
from etpp_dali.util.devices import resolve_device

pytest.importorskip("nvidia.dali")


def small_schedule(resolution=32, replay=1, budget=2):
    stages = [StageSpec(16, 0.0, 1 / 3), StageSpec(24, 4.0, 1 / 3, replay=replay), StageSpec(32, 9.0, 1 / 3)]
    return Curriculum(stages, budget=budget, resolution=resolution, split="epochs")


def epoch_labels(loader, epoch):
    loader.set_epoch(epoch)
    return [y.clone() for _, y in loader]


def test_follows_the_schedule_without_lag_or_rebuild(demo_root):
    cur = Curriculum([StageSpec(16, 0.0, 0.25), StageSpec(20, 3.0, 0.25), StageSpec(28, 6.0, 0.25),
                      StageSpec(32, 9.0, 0.25)], budget=4, resolution=32, split="epochs")
    loader = CurriculumLoader(demo_root, cur, batch_size=16, device="cpu", prefetch=3)
    seen = []  # per batch, from the pipeline's outputs: (epoch, step) of its tag, band of its images
    for epoch in range(cur.total_epochs):
        loader.set_epoch(epoch)
        stage = cur.stage_at(epoch)
        assert (loader.band, loader.magnitude, loader.stage.index) == (stage.band, stage.magnitude, stage.index)
        labels = []
        for x, y in loader:
            meta = loader.batch_meta
            seen.append((meta["epoch"], meta["step"], x.shape[-1]))
            assert x.shape == (16, 3, meta["band"], meta["band"]) and x.dtype == torch.float32
            assert y.dtype == torch.int64
            labels.append(y)
        assert len(loader) == 6  # 96 images / 16
        assert np.array_equal(np.bincount(torch.cat(labels).numpy()), [24] * 4)  # every image once
    # every batch in consumption order, at its own epoch's band: nothing lags behind a stage change
    assert seen == [(e, s, cur.stage_at(e).band) for e in range(cur.total_epochs) for s in range(6)]
    assert loader.rebuilds == 1  # band and magnitude changed without a rebuild
    assert abs(float(x.mean())) < 3 and float(x.std()) > 0.1  # normalised


def test_same_seed_same_batches_and_fresh_shuffle_per_epoch(unique_list):
    cur = small_schedule()
    a = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=3)
    b = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=3)
    a.set_epoch(0)
    b.set_epoch(0)
    (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
    assert torch.equal(ya, yb) and torch.equal(xa, xb)
    e0, e1 = torch.cat(epoch_labels(a, 0)), torch.cat(epoch_labels(a, 1))
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(40))  # every image, every epoch
    assert not torch.equal(e0, e1)
    c = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=4)
    assert not torch.equal(torch.cat(epoch_labels(c, 0)), e0)


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_keywords_and_settings_give_the_same_loader_and_batches(unique_list, demo_root):
    """The keyword constructor builds the settings object the settings form takes: same settings,
    same pipeline config, identical batches in every epoch (a tensor-replay stage and erasing
    included), and the validation loader takes the training loader's settings as they are."""
    cur = small_schedule(replay=2, budget=6)
    options = dict(device="cpu", seed=7, num_threads=1, prefetch=1, reprob=0.25, echo="tensor", channels_last=True)
    by_keywords = CurriculumLoader(unique_list, cur, 8, **options)
    settings = LoaderSettings(batch_size=8, **options)
    by_settings = CurriculumLoader(unique_list, cur, settings=settings)
    assert by_keywords.settings == settings and by_keywords.cfg == by_settings.cfg
    for epoch in range(cur.total_epochs):
        a, b = epoch_batches(by_keywords, epoch), epoch_batches(by_settings, epoch)
        assert len(a) == len(b) == len(by_settings) > 0
        assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))
    val_keywords = ValidationLoader(demo_root, 32, 8, device="cpu", num_threads=1, channels_last=True)
    val_settings = ValidationLoader(demo_root, 32, settings=settings)
    pairs = list(zip(val_keywords, val_settings))
    assert len(pairs) == len(val_keywords) == 3 and pairs[0][0][0].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in pairs)


@pytest.mark.parametrize("name,value,message", [
    ("batch_size", 0, "batch_size = 0 is invalid"), ("seed", -1, "seed = -1 is invalid"),
    ("num_threads", 0, "num_threads = 0 is invalid"), ("prefetch", 0, "prefetch = 0 is invalid"),
    ("replay_buffer", 0, "replay_buffer = 0 is invalid"), ("device", "tpu", "device = 'tpu' is unknown"),
    ("num_shards", 0, "num_shards = 0 is invalid"), ("shard_id", 2, "shard_id = 2 is outside 0..0"),
    ("lowpass", "blur", "lowpass = 'blur' is unknown"), ("fourier_backend", "fast", "fourier_backend = 'fast'"),
    ("interpolation", "nearest", "interpolation = 'nearest'"), ("hw_decoder_load", 2.0, "hw_decoder_load = 2.0"),
    ("dtype", torch.int64, "dtype = torch.int64 is invalid"), ("reprob", 1.5, "reprob = 1.5 is outside 0..1"),
    ("echo", "often", "echo = 'often' is unknown"), ("echo_max", 0, "echo_max = 0"),
    ("echo_buffer_mb", 0, "echo_buffer_mb = 0")])
def test_a_bad_setting_fails_at_once_in_one_line_naming_it(name, value, message):
    with pytest.raises(ValueError, match=message) as caught:
        LoaderSettings(**{"batch_size": 8, name: value})
    assert "\n" not in str(caught.value)


def test_the_two_forms_do_not_mix_and_settings_are_frozen(demo_root):
    cur = small_schedule()
    settings = LoaderSettings(batch_size=8, device="cpu", echo_max="3")
    assert settings.echo_max == 3  # normalised once
    with pytest.raises(TypeError, match="not both"):
        CurriculumLoader(demo_root, cur, 8, settings=settings)
    with pytest.raises(TypeError, match="not both"):
        CurriculumLoader(demo_root, cur, settings=settings, seed=2)
    with pytest.raises(TypeError, match="needs batch_size"):
        CurriculumLoader(demo_root, cur, device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        CurriculumLoader(demo_root, cur, 8, colour=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'seed'"):  # a training setting
        ValidationLoader(demo_root, 32, 8, seed=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 16


def test_shards_are_disjoint_and_equal_in_length(unique_list):
    cur = small_schedule()
    ranks = [CurriculumLoader(unique_list, cur, batch_size=6, device="cpu", shard_id=r, num_shards=3) for r in range(3)]
    for epoch in (0, 1):
        parts = [torch.cat(epoch_labels(r, epoch)).tolist() for r in ranks]
        assert len({len(p) for p in parts}) == 1 and len({len(r) for r in ranks}) == 1
        sets = [set(p) for p in parts]
        assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
        assert sum(len(s) for s in sets) == 39  # 40 // 3 per rank; the remainder waits an epoch


def test_resume_continues_exactly(unique_list):
    cur = small_schedule()
    full = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1)
    reference = [(x.clone(), y.clone()) for e in range(2) for x, y in (full.set_epoch(e) or full)]
    first = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1)
    first.set_epoch(0)
    it = iter(first)
    got = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (0, 3)
    second = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1)
    second.load_state_dict(state)
    second.set_epoch(0)
    got += [(x, y) for x, y in second]
    second.set_epoch(1)
    got += [(x, y) for x, y in second]
    assert len(got) == len(reference)
    for (x, y), (rx, ry) in zip(got, reference):
        assert torch.equal(y, ry) and torch.equal(x, rx)
    other = CurriculumLoader(unique_list, Curriculum.preset("etpp", resolution=32, budget=3), batch_size=8,
                             device="cpu")
    with pytest.raises(ValueError, match="another schedule"):
        other.load_state_dict(state)


def test_out_of_order_epoch_rebuilds_and_is_correct(unique_list):
    cur = small_schedule()
    loader = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu")
    direct = epoch_labels(loader, 1)
    again = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu")
    epoch_labels(again, 0)
    assert all(torch.equal(a, b) for a, b in zip(epoch_labels(again, 1), direct))
    epoch_labels(again, 0)  # backwards: a rebuild
    assert again.rebuilds == 2
    with pytest.raises(ValueError, match="outside the schedule"):
        again.set_epoch(cur.total_epochs)


def test_tensor_replay_stage_mixes_fresh_and_buffered_samples(unique_list):
    cur = small_schedule(replay=2, budget=6)
    stage = cur.stages[1]
    assert stage.replay == 2 and stage.epochs == 1
    loader = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo="tensor")
    loader.set_epoch(stage.start_epoch)
    assert loader.fresh_batch_size() == 4 and len(loader) == 10  # 40 fresh images, 4 a step
    seen: set[int] = set()
    replayed_any = False
    for x, y in loader:
        assert x.shape == (8, 3, 24, 24) and loader.batch_meta["fresh"] == 4
        fresh, replayed = set(y[:4].tolist()), set(y[4:].tolist())
        seen |= fresh
        assert replayed <= seen  # drawn from samples already produced in this stage
        replayed_any |= bool(replayed - fresh)
    assert seen == set(range(40)) and replayed_any


def test_options_channels_last_dtype_and_resize_mode(demo_root):
    cur = small_schedule()

    def first_batch(**options):
        loader = CurriculumLoader(demo_root, cur, batch_size=16, device="cpu", randaugment=False, **options)
        loader.set_epoch(0)
        return next(iter(loader))[0]

    x = first_batch(channels_last=True, dtype=torch.bfloat16, lowpass="resize")
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    exact, approx = first_batch(lowpass="fourier"), first_batch(lowpass="resize")
    band = cur.stage_at(0).band
    assert exact.shape == approx.shape == (16, 3, band, band)
    # the same windows and flips, low-passed two ways: close, but not the same pixels
    assert not torch.allclose(exact, approx, atol=0.05)
    assert float((exact - approx).abs().mean()) < 0.5 * float(exact.std())
    assert torch.allclose(approx, x.float(), atol=0.05)  # bfloat16 rounding only


def test_bad_files_are_reported_once_and_skipped(hymenoptera, capfd):
    cur = Curriculum([StageSpec(64, 5.0, 1.0)], budget=1, resolution=64, split="epochs")
    loader = CurriculumLoader(hymenoptera, cur, batch_size=32, device="cpu")
    err = capfd.readouterr().err
    assert err.count("imageNotFound.gif") == 1 and "1 file(s) left out" in err
    loader.set_epoch(0)
    n = sum(len(y) for _, y in loader)
    assert n == len(loader) * 32 and len(loader) == 8  # 244 images: 7 full batches and one completed


def test_bad_paths_fail_before_any_work(tmp_path, demo_root):
    cur = small_schedule()
    with pytest.raises(DataError, match="no such path"):
        CurriculumLoader(tmp_path / "nope", cur, batch_size=4, device="cpu")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no decodable image"):
        CurriculumLoader(tmp_path / "empty", cur, batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="batch_size = 0"):
        CurriculumLoader(demo_root, cur, batch_size=0, device="cpu")


def test_validation_every_image_once_across_ranks(demo_root):
    total = 0
    labels = []
    for rank in range(3):
        val = ValidationLoader(demo_root, 32, 5, device="cpu", shard_id=rank, num_shards=3)
        for _ in range(2):  # iterable twice
            got = [(x.shape, y) for x, y in val]
        assert all(s[1:] == (3, 32, 32) for s, _ in got)
        labels += [y for _, y in got]
        total += sum(len(y) for _, y in got)
    assert total == 24
    assert np.array_equal(np.bincount(torch.cat(labels).numpy()), [6, 6, 6, 6])


@pytest.mark.gpu
def test_gpu_loader_follows_schedule(demo_root):
    cur = small_schedule()
    loader = CurriculumLoader(demo_root, cur, batch_size=16, device="cuda")
    for epoch in range(cur.total_epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert x.is_cuda and y.is_cuda and x.shape[-1] == cur.stage_at(epoch).band
            assert loader.batch_meta["band"] == cur.stage_at(epoch).band
    val = ValidationLoader(demo_root, 32, 8, device="cuda")
    assert sum(len(y) for _, y in val) == 24


def damaged_png(tmp_path) -> Path:
    path = tmp_path / "damaged.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 200] = bytes(200)
    path.write_bytes(bytes(data))
    return path


def test_a_file_the_decoder_fails_on_is_left_out_without_stopping(demo_root, tmp_path, capfd):
    """A damaged file that slipped past the up-front check (here: added to the source by hand)
    is reported once, left out, and training and validation go on."""
    bad = damaged_png(tmp_path)
    src = image_folder(demo_root / "train")
    src = Source(src.name, src.classes, [*src.records[:10], ImageRecord(str(bad), 0, 50, 40, "PNG"), *src.records[10:]])
    cur = small_schedule()
    loader = CurriculumLoader(src, cur, batch_size=16, device="cpu")
    counts = [sum(len(y) for y in epoch_labels(loader, e)) for e in range(2)]
    assert counts == [112, 112]  # 97 images in 7 batches of 16, the damaged one replaced by a good one
    assert list(loader.excluded) == [10] and loader.state_dict()["excluded"] == [10]
    assert capfd.readouterr().err.count("left out") == 1
    val_src = image_folder(demo_root / "val", src.classes)
    val_src = Source(val_src.name, val_src.classes, [*val_src.records[:3], ImageRecord(str(bad), 0, 50, 40, "PNG"),
                                                     *val_src.records[3:]])
    val = ValidationLoader(val_src, 32, 5, device="cpu")
    assert [sum(len(y) for _, y in val) for _ in range(2)] == [24, 24]


def test_loader_reads_webdataset_shards_and_file_lists(demo_root, tmp_path, unique_list):
    files = sorted((demo_root / "train").rglob("*.jpg"))[:32]
    shard = write_shard(tmp_path / "shard-000.tar", [(f"k{i:03d}", f.read_bytes(), i % 4) for i, f in enumerate(files)])
    cur = small_schedule()
    for data, n in ((str(shard), 32), (unique_list, 40)):
        loader = CurriculumLoader(data, cur, batch_size=8, device="cpu")
        loader.set_epoch(0)
        got = [(x.shape, y) for x, y in loader]
        band = cur.stage_at(0).band
        assert sum(len(y) for _, y in got) == n and got[0][0] == (8, 3, band, band)


@pytest.fixture
def odd_sized_val(tmp_path):
    """Validation images (blocky noise, lossless) of sizes where DALI's own rules differ from
    torchvision's at R = 64: a longer side that DALI's resize_shorter would round up, crop offsets
    it would round half up. Returns the root and the images as C x H x W uint8 tensors."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "val" / "a"
    folder.mkdir(parents=True)
    images = []
    for i, (h, w) in enumerate([(74, 93), (93, 74), (60, 83), (80, 80), (375, 500)]):
        blocks = np.kron(rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3)), np.ones((4, 4, 1)))[:h, :w]
        Image.fromarray(blocks.astype(np.uint8)).save(folder / f"{i}.png")
        images.append(torch.from_numpy(blocks.astype(np.uint8)).permute(2, 0, 1).contiguous())
    return tmp_path, images


def unnormalised(x: torch.Tensor) -> torch.Tensor:
    std, mean = torch.tensor(IMAGENET_STD_255).view(3, 1, 1), torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1)
    return x.float().cpu() * std + mean


def test_validation_takes_torchvisions_pixels(odd_sized_val):
    """timm's evaluation transform to the pixel: torchvision's Resize(floor(R / 0.875), bicubic,
    antialias) and CenterCrop(R)."""
    root, images = odd_sized_val
    (x, _), = list(ValidationLoader(root, 64, 5, device="cpu"))
    for got, image in zip(unnormalised(x), images):
        resized = F.resize(image, 73, interpolation=InterpolationMode.BICUBIC, antialias=True)
        assert torch.allclose(got, F.center_crop(resized, [64, 64]).float(), atol=1e-3)


@pytest.mark.gpu
def test_validation_cpu_and_gpu_take_the_same_pixels(odd_sized_val):
    """The same sizes and crop places on both devices (the resize kernels differ slightly):
    the GPU crop is much closer to the CPU's than the CPU's is to itself moved by one pixel."""
    root, _ = odd_sized_val
    (cpu, _), = list(ValidationLoader(root, 64, 5, device="cpu"))
    (gpu, _), = list(ValidationLoader(root, 64, 5, device="cuda"))
    cpu, gpu = unnormalised(cpu), unnormalised(gpu)
    for dim in (-1, -2):
        shifted = (cpu.narrow(dim, 1, 63) - cpu.narrow(dim, 0, 63)).abs().mean(dim=(1, 2, 3))
        assert ((gpu - cpu).abs().mean(dim=(1, 2, 3)) < 0.5 * shifted).all()


def test_device_id_selects_the_gpu(demo_root, monkeypatch):
    with pytest.raises(ValueError, match="device_id = 0 selects a GPU, but device = 'cpu'"):
        resolve_device("cpu", 0)
    with pytest.raises(ValueError, match="'tpu' is unknown"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", 1) == "cpu"  # no GPU: auto is the CPU, device_id unused
        with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
            resolve_device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # two GPUs, as far as the loaders see
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", 1) == resolve_device("auto", 1) == resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cuda:1", 1) == "cuda:1" and resolve_device("cuda") == "cuda"
    with pytest.raises(ValueError, match="name different GPUs"):
        resolve_device("cuda:1", 0)
    with pytest.raises(ValueError, match="CUDA device 2 is not visible"):
        resolve_device("cuda", 2)
    cur = small_schedule()
    for loader in (CurriculumLoader(demo_root, cur, 8, device="cuda", device_id=1, verbose=False),
                   ValidationLoader(demo_root, 32, 8, device="cuda:1", verbose=False)):
        assert loader.device == torch.device("cuda", 1) and loader.cfg.device_id == 1
        assert loader.cfg.device == "gpu"
    assert define_train_pipeline(loader.cfg, lambda: None).device_id == 1  # defined, not built


def test_a_dropped_loader_frees_its_pipeline_at_once(demo_root):
    """No reference cycle through the pipeline: the garbage collector, run wherever the program
    happens to be (inside a thread pool's lock, say), never has a pipeline to shut down."""
    def make(kind):
        if kind == "train":
            loader = CurriculumLoader(demo_root, small_schedule(), 16, device="cpu")
            loader.set_epoch(0)
            return loader
        return ValidationLoader(demo_root, 32, 5, device="cpu")

    gc.disable()
    try:
        for kind in ("train", "val"):
            loader = make(kind)
            it = iter(loader)
            next(it)  # a pipeline mid-epoch, prefetching
            pipe = weakref.ref(loader._runner._pipe)
            del loader, it
            assert pipe() is None
    finally:
        gc.enable()


def test_dali_iterator_drop_in_as_the_readme_writes_it(unique_list):
    cur = small_schedule()
    train_loader = CurriculumLoader(unique_list, cur, batch_size=16, device="cpu").dali_iterator(
        output_map=["data", "label"], last_batch_policy="PARTIAL")
    train_loader.set_epoch(0)
    data = [d for d in train_loader]
    assert len(data) == 3 and sorted(data[0][0]) == ["data", "label"]
    labels = torch.cat([d[0]["label"].flatten() for d in data])
    assert sorted(labels.tolist()) == list(range(40))  # PARTIAL: the completing repeats left out
