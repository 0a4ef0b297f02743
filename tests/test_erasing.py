"""Random erasing against timm's own RandomErasing(mode="pixel"), by statistics on fixed draws."""

import random

import numpy as np
import pytest
import torch

from etpp_dali.ops.erasing import RandomErasing, apply_erasing, sample_erasing

N, B = 4000, 48


def erasing_stats(x: torch.Tensor) -> dict:
    """Erased fraction, share of samples erased, mean erased area and log aspect, noise mean and std.
    Works on a batch of zeros: timm's and our noise is never exactly 0."""
    mask = x[:, 0] != 0
    per_sample = mask.flatten(1).float().mean(1)
    hit = per_sample > 0
    rows = mask.any(2).sum(1)[hit].float()
    cols = mask.any(1).sum(1)[hit].float()
    noise = x[x != 0]
    return {"fraction": mask.float().mean().item(), "erased": hit.float().mean().item(),
            "area": per_sample[hit].mean().item(), "log_aspect": torch.log(rows / cols).mean().item(),
            "log_aspect_spread": torch.log(rows / cols).std().item(),
            "mean": noise.mean().item(), "std": noise.std().item()}


@pytest.fixture(scope="module")
def timm_stats():
    timm_re = pytest.importorskip("timm.data.random_erasing")
    random.seed(0)
    torch.manual_seed(0)
    erase = timm_re.RandomErasing(probability=0.25, mode="pixel", device="cpu")
    return erasing_stats(erase(torch.zeros(N, 3, B, B)))


def test_matches_timm_by_statistics(timm_stats):
    ours = erasing_stats(RandomErasing(0.25)(torch.zeros(N, 3, B, B), np.random.default_rng(0)))
    # standard errors at N = 4000: fraction ~0.0015, erased ~0.007, area ~0.003, noise mean ~0.002
    assert ours["fraction"] == pytest.approx(timm_stats["fraction"], abs=0.006)
    assert ours["erased"] == pytest.approx(timm_stats["erased"], abs=0.03)
    assert ours["erased"] == pytest.approx(0.25, abs=0.03)
    assert ours["area"] == pytest.approx(timm_stats["area"], abs=0.012)
    assert ours["log_aspect"] == pytest.approx(timm_stats["log_aspect"], abs=0.08)
    assert ours["log_aspect_spread"] == pytest.approx(timm_stats["log_aspect_spread"], rel=0.08)
    assert abs(ours["mean"]) < 0.01 and abs(timm_stats["mean"]) < 0.01
    assert ours["std"] == pytest.approx(timm_stats["std"], abs=0.01)
    assert ours["std"] == pytest.approx(1.0, abs=0.01)


def test_one_rectangle_per_erased_sample_and_nothing_else_changes():
    x = torch.rand(64, 3, 24, 32) + 5.0  # no pixel is near the noise's range by chance
    before = x.clone()
    boxes = sample_erasing(np.random.default_rng(7), 64, 24, 32, probability=0.6)
    apply_erasing(x, boxes)
    for i in range(64):
        changed = (x[i] != before[i]).all(0)
        assert bool(((x[i] != before[i]).any(0) == changed).all())  # every channel of a pixel, or none
        if not boxes.erase[i]:
            assert not changed.any()
            continue
        t, left, h, w = (int(v[i]) for v in (boxes.top, boxes.left, boxes.height, boxes.width))
        assert 0 < h < 24 and 0 < w < 32 and t + h <= 24 and left + w <= 32
        expected = torch.zeros(24, 32, dtype=torch.bool)
        expected[t:t + h, left:left + w] = True
        assert torch.equal(changed, expected)
    assert 0.45 < boxes.erase.mean() < 0.75


def test_same_draws_same_result_and_edge_probabilities():
    base = torch.zeros(32, 3, 16, 16)
    a = RandomErasing(0.5)(base.clone(), np.random.default_rng(3))
    b = RandomErasing(0.5)(base.clone(), np.random.default_rng(3))
    c = RandomErasing(0.5)(base.clone(), np.random.default_rng(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(RandomErasing(0.0)(base.clone(), np.random.default_rng(0)), base)
    every = sample_erasing(np.random.default_rng(0), 500, 64, 64, probability=1.0)
    assert every.erase.mean() > 0.95  # only samples whose 10 attempts all miss are left alone
    half = RandomErasing(0.5)(torch.zeros(32, 3, 16, 16, dtype=torch.float16), np.random.default_rng(3))
    assert half.dtype == torch.float16 and (half != 0).any()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="probability = 1.5"):
        RandomErasing(1.5)
    with pytest.raises(ValueError, match="area"):
        RandomErasing(0.25, area=(0.5, 0.1))
    with pytest.raises(ValueError, match="N x C x H x W"):
        RandomErasing(0.25)(torch.zeros(3, 16, 16), np.random.default_rng(0))


@pytest.mark.gpu
def test_same_rectangles_on_the_gpu():
    cpu = RandomErasing(0.5)(torch.zeros(64, 3, 32, 32), np.random.default_rng(1))
    gpu = RandomErasing(0.5)(torch.zeros(64, 3, 32, 32, device="cuda"), np.random.default_rng(1))
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu != 0, gpu.cpu() != 0)
    again = RandomErasing(0.5)(torch.zeros(64, 3, 32, 32, device="cuda"), np.random.default_rng(1))
    assert torch.equal(gpu, again)
