import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from etpp_dali.data.sources import open_source
from etpp_dali.loader import graphs as pipeline
from etpp_dali.loader.graphs import (
    TRAIN_OUTPUTS,
    TRAIN_STAGES,
    PipelineConfig,
    TrainBatch,
    centre_crop_geometry,
    define_train_pipeline,
    make_train_batch,
    make_val_batch,
    sample_crop_windows,
    val_resize_size,
)
from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, resize_hwc
from etpp_dali.ops.fourier import fourier_crop
from etpp_dali.ops.randaugment import apply_colour_ops_pil


def test_crop_windows_fit_and_follow_torchvision_statistics():
    rng = np.random.default_rng(0)
    sizes = np.tile([[375, 500]], (4000, 1))
    anchor, shape = sample_crop_windows(rng, sizes)
    y, x, h, w = anchor[:, 0], anchor[:, 1], shape[:, 0], shape[:, 1]
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 375).all() and (x + w <= 500).all()
    frac = h * w / (375 * 500)
    ratio = w / h
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35
    torch.manual_seed(0)
    ref = np.array([RandomResizedCrop.get_params(torch.empty(3, 375, 500), (0.08, 1.0), (3 / 4, 4 / 3))
                    for _ in range(4000)], dtype=np.float64)
    ref_frac = ref[:, 2] * ref[:, 3] / (375 * 500)
    assert frac.mean() == pytest.approx(ref_frac.mean(), abs=0.02)
    assert (w / 500).mean() == pytest.approx((ref[:, 3] / 500).mean(), abs=0.02)
    assert (x / np.maximum(500 - w, 1)).mean() == pytest.approx(0.5, abs=0.03)  # uniform placement


def test_crop_window_fallback_is_a_clamped_centre_crop():
    rng = np.random.default_rng(1)
    anchor, shape = sample_crop_windows(rng, np.array([[10, 1000]]), scale=(0.99, 1.0))
    h, w = shape[0]
    assert h == 10 and w == round(10 * 4 / 3)
    assert anchor[0, 1] == (1000 - w) // 2


def test_crop_windows_are_deterministic():
    sizes = np.array([[300, 400], [50, 60]])
    a = sample_crop_windows(np.random.default_rng(5), sizes)
    b = sample_crop_windows(np.random.default_rng(5), sizes)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_config_validation_and_val_size():
    assert val_resize_size(224) == 256 and val_resize_size(64) == 73
    for kwargs, needle in (({"device": "tpu"}, "device = 'tpu'"), ({"lowpass": "blur"}, "lowpass = 'blur'"),
                           ({"interpolation": "nearest"}, "interpolation = 'nearest'"),
                           ({"resolution": 8}, "resolution = 8"), ({"hw_decoder_load": 2.0}, "hw_decoder_load")):
        with pytest.raises(ValueError, match=needle):
            PipelineConfig(**kwargs)


def test_val_geometry_is_torchvisions_resize_and_centre_crop():
    """The resized size and the crop's place, against torchvision's own Resize(int) and CenterCrop."""
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(40, 600, (60, 2)), [[375, 500], [500, 375], [74, 93], [93, 74], [80, 80]]])
    for resolution in (64, 224):
        resized, anchor = centre_crop_geometry(sizes, resolution)
        shorter = val_resize_size(resolution)
        for (h, w), (rh, rw), (y, x) in zip(sizes, resized, anchor):
            image = torch.zeros(1, int(h), int(w), dtype=torch.uint8)
            assert F.resize(image, shorter, interpolation=InterpolationMode.NEAREST).shape[1:] == (rh, rw)
            places = torch.arange(int(rh) * int(rw)).reshape(1, int(rh), int(rw))
            assert int(F.center_crop(places, [resolution, resolution])[0, 0, 0]) == y * rw + x
    # where DALI's own rules differ: the longer side truncated (91, not 92), the offset rounded
    # half to even (4, not 5: (73 - 64) / 2 = 4.5)
    (rh, rw), (y, x) = (v[0] for v in centre_crop_geometry(np.array([[74, 93]]), 64))
    assert (rh, rw, y, x) == (73, 91, 4, 14)


def test_named_feed_and_outputs():
    cfg = PipelineConfig(resolution=32, batch_size=2)
    encoded = [np.zeros(4, np.uint8)] * 2
    batch = make_train_batch(encoded, np.array([3, 4]), np.array([[40, 50], [60, 30]]), band=16, magnitude=9.0,
                             epoch=2, step=5, rng=np.random.default_rng(0), cfg=cfg)
    for with_augment in (False, True):
        fed = dict(zip(TrainBatch.feed_names(with_augment), batch.as_feed(with_augment)))
        assert list(fed["labels"]) == [3, 4] and fed["tag"].tolist() == [[2, 5], [2, 5]]
        assert list(fed["band"]) == [16, 16] and ("matrix" in fed) == with_augment
        assert "magnitude" not in fed  # it shaped the draws; DALI has no use for it
    assert fed["matrix"] is batch.augment.matrix and fed["encoded"] is encoded
    assert TRAIN_OUTPUTS == ("images", "labels", "tag")
    val = make_val_batch(encoded, np.array([1, 2]), np.array([[74, 93], [80, 80]]), PipelineConfig(resolution=64))
    size, crop_y, crop_x = val.as_feed()[2:]
    assert size.tolist() == [[73, 91], [73, 73]]
    # DALI places a crop at round(pos * (side - R)): these land on the offsets above
    assert np.round(crop_x * (size[:, 1] - 64)).tolist() == [14, 4] and np.round(crop_y * 9).tolist() == [4, 4]


# every GPU graph the loaders build: training with and without RandAugment, with the exact crop
# and with the resize approximation, and validation
GPU_GRAPHS = {f"train-{'randaugment' if ra else 'plain'}-{lp}": ("train", {"randaugment": ra, "lowpass": lp})
              for ra in (True, False) for lp in ("fourier", "resize")} | {"val": ("val", {})}


@pytest.mark.parametrize("kind,options", GPU_GRAPHS.values(), ids=GPU_GRAPHS.keys())
def test_gpu_graphs_are_defined_without_a_gpu(kind, options, monkeypatch):
    """Defining a pipeline for device_id=0 needs no GPU; DALI checks at definition what it can:
    argument names, an input on the wrong device (a CPU operator on GPU data, a missing .gpu()),
    an argument input off the CPU; building the Python graph then checks every operator's
    arguments against its schema. The image output must come out on the GPU."""
    named = {}
    graph = getattr(pipeline, f"_{kind}_graph")

    def recording(cfg, feed, **options):  # options: define_train_pipeline's stop_after
        named.update(graph(cfg, feed, **options))
        return named

    monkeypatch.setattr(pipeline, f"_{kind}_graph", recording)
    cfg = PipelineConfig(resolution=64, batch_size=4, device="gpu", device_id=0, **options)
    define = pipeline.define_train_pipeline if kind == "train" else pipeline.define_val_pipeline
    pipe = define(cfg, lambda: None)
    pipe.start_py_workers()  # the Python graph: every operator's arguments checked; nothing built
    outputs = pipeline.TRAIN_OUTPUTS if kind == "train" else pipeline.VAL_OUTPUTS
    assert tuple(named) == outputs and pipe.device_id == 0
    assert named["images"].device == "gpu" and named["labels"].device == "cpu"


# --------------------------------------------------------------------- the graph cut after a stage
def _cut_outputs(cfg, values, stop_after):
    """Per sample, the images of one run of the training graph cut after ``stop_after`` (None:
    whole), fed ``values`` (the same draws every run)."""
    pipe = define_train_pipeline(cfg, lambda: values, stop_after=stop_after)
    pipe.build()
    images, labels, _ = pipe.run()
    return [np.array(images.at(i)) for i in range(len(labels))]


def test_a_cut_graph_outputs_the_full_graphs_intermediate_at_the_same_draws(demo_root):
    """Each stage's output, from the graph cut there, is what the next stage turns into the next
    one's: so the cut graphs compute the full graph's own intermediates (not a copy's)."""
    source = open_source(demo_root, "train")
    cfg = PipelineConfig(resolution=32, batch_size=8, num_threads=1)
    idx = np.arange(0, 80, 10)
    batch = make_train_batch([source.read(int(i)) for i in idx], source.labels[idx], source.sizes[idx], band=16,
                             magnitude=9.0, epoch=0, step=0, rng=np.random.default_rng(3), cfg=cfg)
    ra = batch.augment
    coloured = ra.colour.any(axis=1)
    assert 0 < ra.geometric.sum() < 8 and 0 < coloured.sum() < 8 and 0 < batch.flip.sum() < 8  # each case met
    out = {stage: _cut_outputs(cfg, batch.as_feed(True), stage) for stage in (None,) + TRAIN_STAGES}
    for i in range(8):
        assert out["decode"][i].shape == (*batch.shape[i].astype(int), 3)  # the crop window, as decoded
        assert np.array_equal(out["resize"][i], resize_hwc(out["decode"][i], (32, 32), "bicubic"))
        flipped = out["resize"][i][:, ::-1] if batch.flip[i] else out["resize"][i]
        assert out["warp"][i].shape == (32, 32, 3)
        assert np.array_equal(out["warp"][i], flipped) != bool(ra.geometric[i])  # warped only where drawn
        expected = apply_colour_ops_pil(out["warp"][i], ra.colour[i], ra.value[i])
        assert np.array_equal(out["colour"][i], expected)
        assert np.array_equal(out["colour"][i], out["warp"][i]) or coloured[i]
        crop = fourier_crop(out["colour"][i][None].astype(np.float32), 16, layout="NHWC", out_layout="NCHW")[0]
        normalised = (crop - np.array(IMAGENET_MEAN_255)[:, None, None]) / np.array(IMAGENET_STD_255)[:, None, None]
        assert out[None][i].shape == (3, 16, 16) and np.allclose(out[None][i], normalised, atol=1e-3)
        assert np.array_equal(out["crop"][i], out[None][i])  # cut after the last stage: the whole graph


def test_stop_after_names_a_stage():
    assert TRAIN_STAGES == ("decode", "resize", "warp", "colour", "crop")
    with pytest.raises(ValueError, match="stop_after = 'augment' is unknown; use one of decode, resize"):
        define_train_pipeline(PipelineConfig(resolution=32, batch_size=2), lambda: None, stop_after="augment")
