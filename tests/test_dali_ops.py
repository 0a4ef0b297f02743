import numpy as np
import pytest
import torch

from etpp_dali.ops.fourier import fourier_crop as torch_fourier_crop
from etpp_dali.ops.fourier import fourier_crop_reference

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def  # noqa: E402

from etpp_dali.ops.dali_ops import fourier_crop, lowpass  # noqa: E402

N = 4
MEAN, STD = [10.0, 20.0, 30.0], [2.0, 3.0, 4.0]


def make_batches(seed=0, count=7, h=40, w=48):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (N, h, w, 3), dtype=np.uint8) for _ in range(count)]


# per batch: the band of each sample (the last mixes bands out of order: groups are cropped
# together and must come back in the input order)
BANDS = [[16] * N, [16] * N, [20] * N, [20, 20, 24, 24], [40] * N, [7] * N, [24, 16, 24, 9]]


def expected(image, band):
    ref = fourier_crop_reference(image[None].astype(np.float64), band, layout="NHWC")[0]
    return (np.moveaxis(ref, -1, 0) - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]


def build(batches, device_id=None, gpu=False, prefetch=3):
    def source(info):
        i = info.iteration % len(batches)
        return list(batches[i]), [np.array(b, dtype=np.int32) for b in BANDS[i]]

    @pipeline_def(batch_size=N, num_threads=2, device_id=device_id, prefetch_queue_depth=prefetch)
    def pipe():
        img, band = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True)
        if gpu:
            img = img.gpu()
        return fourier_crop(img, band, mean=MEAN, std=STD), lowpass(img, band, mode="resize", mean=MEAN, std=STD)

    p = pipe()
    p.build()
    return p


def check_outputs(p, batches, to_numpy):
    for k in range(len(batches)):
        exact, resized = p.run()
        assert exact.layout() == "CHW"
        for j in range(N):
            band = BANDS[k][j]
            got = to_numpy(exact[j])
            assert got.shape == (3, band, band)
            assert np.abs(got - expected(batches[k][j], band)).max() < 1e-3
            assert to_numpy(resized[j]).shape == (3, band, band)


def test_cpu_operator_is_exact_per_iteration_band_without_prefetch_lag():
    """Bands change per iteration (and per sample) through a DataNode; every batch is checked
    against the reference, with three batches in flight (so reused buffers would show)."""
    batches = make_batches()
    check_outputs(build(batches), batches, np.array)


def test_static_band_and_chw_float_input():
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(N)]

    @pipeline_def(batch_size=N, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: data, batch=True, layout="CHW")
        return fourier_crop(x, 12, layout="CHW")

    p = pipe()
    p.build()
    (out,) = p.run()
    for j in range(N):
        ref = fourier_crop_reference(data[j][None].astype(np.float64), 12)[0]
        assert np.abs(np.array(out[j]) - ref).max() < 1e-5


def test_bad_arguments():
    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe(kwargs):
        x = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)], batch=True)
        return fourier_crop(x, **kwargs)

    for kwargs, needle in (({"band": 0}, "band = 0"), ({"band": 4, "layout": "NHWC"}, "layout = 'NHWC'"),
                           ({"band": 4, "std": [1, 0, 1]}, "std =")):
        with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
            pipe(kwargs).build()
    with pytest.raises(ValueError, match="lowpass = 'box'"):
        lowpass(None, 4, mode="box")


def test_gpu_band_is_refused_with_a_clear_error():
    """The band must stay on the host (the GPU operator reads it there, without a copy back);
    defining the graph is enough to see the error, no GPU needed."""

    @pipeline_def(batch_size=1, num_threads=1, device_id=0)
    def pipe():
        x, band = fn.external_source(name="x", batch=True), fn.external_source(name="band", batch=True)
        return fourier_crop(x.gpu(), band.gpu())

    with pytest.raises(ValueError, match="band is a GPU DataNode"):
        pipe()


@pytest.mark.gpu
def test_gpu_operator_matches_cpu_reference():
    batches = make_batches(seed=2)
    p = build(batches, device_id=0, gpu=True)
    check_outputs(p, batches, lambda t: np.array(t.as_cpu()))



@pytest.mark.gpu
def test_gpu_operator_equals_torch_fourier_crop_on_the_same_batch():
    """The DALI GPU operator (DALI's stream, no host sync) against the plain torch crop on CUDA,
    batch by batch, with three batches in flight."""

    batches = make_batches(seed=3)
    p = build(batches, device_id=0, gpu=True)
    mean = torch.tensor(MEAN, device="cuda")[:, None, None]
    std = torch.tensor(STD, device="cuda")[:, None, None]
    for k, batch in enumerate(batches):
        exact, _ = p.run()
        for band in set(BANDS[k]):
            idx = [j for j in range(N) if BANDS[k][j] == band]
            x = torch.from_numpy(batch[idx]).cuda()
            ref = (torch_fourier_crop(x, band, layout="NHWC", out_layout="NCHW") - mean) / std
            for r, j in zip(ref.cpu().numpy(), idx):
                assert np.abs(np.array(exact[j].as_cpu()) - r).max() < 1e-3, (k, j)
