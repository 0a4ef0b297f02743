import numpy as np
import pytest
import torch

from etpp_dali import Curriculum, StageSpec
from etpp_dali.loader.dali_iterator import DALIStyleIterator
from etpp_dali.loader.echo import auto as echo_auto
from etpp_dali.loader.echo.auto import choose_echo, predicted_wait
from etpp_dali.loader.echo.schedule import echo_uses, echo_window, parse_echo
from etpp_dali.loader.loaders import CurriculumLoader

pytest.importorskip("nvidia.dali")


def echo_schedule(replay=4, budget=8):
    """Two stages: band 16 fresh, then band 24 with replay factor `replay` (its epochs divided by it)."""
    stages = [StageSpec(16, 0.0, 0.5), StageSpec(24, 9.0, 0.5, replay=replay)]
    return Curriculum(stages, budget=budget, resolution=32, split="epochs")


@pytest.mark.parametrize("fresh,uses,factor,window", [(40, 160, 4, 8), (40, 158, 4, 16), (100, 300, 3, 8)])
def test_uses_each_image_factor_times_never_twice_in_a_batch(fresh, uses, factor, window):
    order = echo_uses(fresh, uses, factor, window)
    assert len(order) == uses
    counts = np.bincount(order, minlength=fresh)
    assert counts.max() == factor and counts.min() >= factor - 1 and (counts < factor).sum() == fresh * factor - uses
    for batch in order[: uses - uses % 8].reshape(-1, 8):  # batches of 8 <= window
        assert len(set(batch.tolist())) == 8


def test_window_fits_the_buffer_and_bad_settings_say_which():
    mb = 1e6 / 2**20  # images of 1e6 bytes
    assert echo_window(64, 4, 1e6, 64 * 13 * mb) == (4, 256)   # room: a window of 4 batches
    assert echo_window(64, 4, 1e6, 200 * mb) == (3, 64)        # room for 3 copies at the least window
    with pytest.raises(ValueError, match="echo_buffer_mb = 10 holds 10 decoded images, less than one batch of 64"):
        echo_window(64, 4, 1e6, 10)
    for bad in (0, -2, 2.5, "1.5", True, "often"):
        with pytest.raises(ValueError, match="echo = "):
            parse_echo(bad, 100)
    with pytest.raises(ValueError, match="echo_buffer_mb"):
        parse_echo("augment", 0)
    assert parse_echo("3", 100).factor == 3 and parse_echo(1, 100).mode == "off"


def stage_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_echo_stage_uses_each_image_r_times_with_its_own_draws(unique_list):
    cur = echo_schedule()
    stage = cur.stages[1]
    loader = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=2)
    assert stage.replay == 4 and loader.echoes(stage.start_epoch) and not loader.echoes(0)
    batches = stage_batches(loader, stage.start_epoch)
    assert len(batches) == len(loader) == 20 and loader.echo_factor() == 4
    labels = torch.cat([y for _, y in batches])
    assert np.array_equal(np.bincount(labels.numpy()), [4] * 40)  # every image, 4 times
    assert all(len(set(y.tolist())) == 8 for _, y in batches)  # never two copies in one batch
    assert all(x.shape == (8, 3, 24, 24) for x, _ in batches)
    images = torch.cat([x for x, _ in batches])
    first = images[labels == 0]
    assert all(not torch.equal(first[0], other) for other in first[1:])  # each use augmented anew
    assert loader.batch_meta["fresh"] < 8


def test_steps_do_not_depend_on_the_echo_factor(unique_list):
    cur = echo_schedule()
    lengths = {}
    for echo in ("augment", "tensor", "off", 2, 3):
        loader = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo=echo)
        lengths[echo] = [loader.batches_in_epoch(e) for e in range(cur.total_epochs)]
        loader.set_epoch(cur.total_epochs - 1)
        assert sum(1 for _ in loader) == lengths[echo][-1]
    assert len({tuple(v) for v in lengths.values()}) == 1
    off = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo="off")
    labels = torch.cat([y for _, y in stage_batches(off, cur.total_epochs - 1)])
    assert np.array_equal(np.bincount(labels.numpy()), [4] * 40)  # r = 1: four passes of fresh images


def test_resume_in_an_echo_stage_yields_the_same_batches(unique_list):
    cur = echo_schedule()
    epoch = cur.stages[1].start_epoch
    settings = dict(batch_size=8, device="cpu", seed=5, reprob=0.25)
    reference = stage_batches(CurriculumLoader(unique_list, cur, **settings), epoch)
    first = CurriculumLoader(unique_list, cur, **settings)
    first.set_epoch(epoch)
    it = iter(first)
    got = [next(it) for _ in range(7)]
    state = first.state_dict()
    assert state["echo"] == "augment" and len(state["echo_held"]) > 0  # the buffer held images
    second = CurriculumLoader(unique_list, cur, **settings)
    second.load_state_dict(state)
    second.set_epoch(epoch)
    got += list(second)
    assert len(got) == len(reference)
    for (x, y), (rx, ry) in zip(got, reference):
        assert torch.equal(y, ry) and torch.equal(x, rx)
    other = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=5, echo=2)
    with pytest.raises(ValueError, match="echo"):
        other.load_state_dict(state)


def test_erasing_hits_about_reprob_of_the_samples_reproducibly(unique_list):
    cur = echo_schedule()
    epoch = cur.stages[1].start_epoch
    plain = stage_batches(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1), epoch)
    erased = stage_batches(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1, reprob=0.25), epoch)
    again = stage_batches(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=1, reprob=0.25), epoch)
    x0, xe, xa = (torch.cat([x for x, _ in b]) for b in (plain, erased, again))
    hit = (x0 != xe).flatten(1).any(1)
    assert 0.15 < float(hit.float().mean()) < 0.35  # 160 samples, p = 0.25
    assert torch.equal(xe, xa)
    labels = torch.cat([y for _, y in plain])
    per_image = [hit[labels == i].tolist() for i in range(40)]
    assert any(0 < sum(h) < 4 for h in per_image)  # the uses of one image are erased independently


def test_a_dali_style_loop_over_an_echo_loader_yields_the_loaders_own_batches(unique_list):
    """DALI's loop (one dict per pipeline, keyed by output_map, N x 1 labels, StopIteration then
    reset()) over the last single-graph epoch and the echo epoch after it: the loader's batches."""
    cur = echo_schedule()
    echo_epoch = cur.stages[1].start_epoch
    assert echo_epoch + 1 == cur.total_epochs  # epochs 0-3 single graph, 4 echoes (the last)
    direct = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=4)
    expected = {e: stage_batches(direct, e) for e in (echo_epoch - 1, echo_epoch)}
    it = CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", seed=4).dali_iterator(["images", "targets"])
    assert isinstance(it, DALIStyleIterator)
    it.set_epoch(echo_epoch - 1)
    for epoch, band, steps in ((echo_epoch - 1, 16, 5), (echo_epoch, 24, 20)):
        assert it.epoch == epoch and len(it) == steps and it.size == steps * 8
        got = [data for data in it]
        assert len(got) == len(expected[epoch]) == steps
        for data, (x, y) in zip(got, expected[epoch]):
            assert isinstance(data, list) and len(data) == 1 and sorted(data[0]) == ["images", "targets"]
            images, labels = data[0]["images"], data[0]["targets"]
            assert images.shape == (8, 3, band, band) and labels.shape == (8, 1)
            assert torch.equal(images, x) and torch.equal(labels.squeeze(1), y)
        with pytest.raises(StopIteration):
            next(it)
        it.reset()  # to the next epoch of the schedule; after the last, the iterator is finished
    assert it.epoch == echo_epoch and list(it) == []


def test_echo_bad_settings_say_which(unique_list):
    cur = echo_schedule()
    with pytest.raises(ValueError, match="echo = 0"):
        CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo=0)
    with pytest.raises(ValueError, match="echo_max = 1.5"):
        CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo_max=1.5)
    with pytest.raises(ValueError, match="echo_buffer_mb = 0.01 .* less than one batch"):
        CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo_buffer_mb=0.01)
    CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo_buffer_mb=0.01, echo="off")  # no buffer


# ---------------------------------------------------------------------------------- echo="auto"
def test_chooser_picks_the_smallest_factor_that_keeps_the_wait_under_5_percent():
    assert choose_echo(0.01, 1.0, 1, 4) == 1            # waited 1%: keeps r
    assert choose_echo(1.0, 1.0, 1, 4) == 2             # single graph, loader 2 s/step against 1 s away
    assert choose_echo(2.0, 1.0, 1, 4) == 3             # 3 s/step: r = 2 still waits 33%
    assert choose_echo(9.0, 1.0, 1, 4) == 4             # even r = 4 waits: capped at echo_max
    assert choose_echo(9.0, 1.0, 1, 2) == 2
    assert choose_echo(0.2, 3.0, 2, 4, decode=0.2) == 3  # decode measured apart: r = 3 waits 4.3%
    assert choose_echo(1.0, 1.0, 2, 4, decode=0.2) == 4  # the augment stage is the bottleneck: capped
    assert choose_echo(0.5, 1.0, 3, 2) == 3             # never below the factor measured at
    assert predicted_wait(0.5, 1.5, 2, 2, decode=0.3) == pytest.approx(0.25)  # at its own factor: measured
    assert predicted_wait(0.2, 3.0, 2, 3, decode=0.2) == pytest.approx(0.1333 / 3.1333, rel=1e-3)


def fixed_chooser(monkeypatch, factor):
    """choose_echo replaced by one that always picks ``factor`` (no timing in the test's outcome)."""
    monkeypatch.setattr(echo_auto, "choose_echo", lambda *args, **kwargs: factor)


def run_epochs(loader, epochs):
    out = []
    for e in epochs:
        out += stage_batches(loader, e)
    return out


def test_auto_applies_the_choice_from_the_second_epoch_of_a_run(unique_list, monkeypatch):
    fixed_chooser(monkeypatch, 3)
    cur = echo_schedule(replay=1)  # stages of 4 epochs: band 16 (epochs 0-3), band 24 (4-7)
    loader = CurriculumLoader(unique_list, cur, batch_size=4, device="cpu", echo="auto", verbose=False)
    assert loader.echo_factor(1) == 1 and loader.echo_choices == {}  # looking chooses nothing
    batches = run_epochs(loader, [0, 1, 4, 5])
    choices = loader.auto_echo.choices  # epochs 2 and 6 too: the feed chose them when it prefetched their batches
    assert {e: choices[e] for e in (0, 1, 4, 5)} == {0: 1, 1: 3, 4: 1, 5: 3}  # a new band starts at the schedule's r
    assert loader.echo_choices == {0: 3, 1: 3} and loader.batch_meta["echo"] == 3
    assert not loader.echoes(4) and loader.echoes(5) and loader.echo_factor(5) == 3
    assert len(batches) == 4 * len(loader) == 40
    labels = [torch.cat([y for _, y in batches[i * 10:(i + 1) * 10]]).numpy() for i in range(4)]
    assert np.array_equal(np.bincount(labels[0], minlength=40), [1] * 40)   # r = 1: each image once
    assert np.bincount(labels[1]).max() == 3 and len(np.unique(labels[1])) == 14  # r = 3: 14 images
    assert all(len(set(y.tolist())) == 4 for _, y in batches)  # never two copies in one batch
    assert loader.state_dict()["echo"] == "auto"


def test_auto_choice_is_kept_in_the_state_and_a_resume_yields_the_same_batches(unique_list, monkeypatch):
    fixed_chooser(monkeypatch, 2)
    cur = echo_schedule(replay=1)
    settings = dict(batch_size=4, device="cpu", seed=3, echo="auto", verbose=False)
    reference = run_epochs(CurriculumLoader(unique_list, cur, **settings), [0, 1])
    first = CurriculumLoader(unique_list, cur, **settings)
    got = stage_batches(first, 0)
    first.set_epoch(1)
    it = iter(first)
    got += [next(it) for _ in range(4)]
    state = first.state_dict()
    assert state["echo_choices"] == [[0, 1], [1, 2]] and len(state["echo_held"]) > 0
    fixed_chooser(monkeypatch, 4)  # a resumed run does not choose again: the state's factors hold
    second = CurriculumLoader(unique_list, cur, **settings)
    second.load_state_dict(state)
    second.set_epoch(1)
    got += list(second)
    assert second.echo_factor(1) == 2 and len(got) == len(reference) == 20
    for (x, y), (rx, ry) in zip(got, reference):
        assert torch.equal(y, ry) and torch.equal(x, rx)


def test_auto_bad_settings_say_which(unique_list):
    cur = echo_schedule(replay=1)
    for bad in (0, -1, 2.5, "x"):
        with pytest.raises(ValueError, match="echo_max = "):
            CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo="auto", echo_max=bad)
    with pytest.raises(ValueError, match="echo_buffer_mb = 0.01 .* less than one batch"):
        CurriculumLoader(unique_list, cur, batch_size=8, device="cpu", echo="auto", echo_buffer_mb=0.01)
    assert parse_echo("auto", 100).mode == "auto"
