"""DALI's iterator protocol on the curriculum loader: a loop written for DALIClassificationIterator."""

import math
import subprocess
import sys
import warnings

import pytest
import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy

from etpp_dali import Curriculum, StageSpec
from etpp_dali.loader.dali_iterator import DALIStyleIterator

pytest.importorskip("nvidia.dali")

from etpp_dali.loader.loaders import CurriculumLoader  # noqa: E402


def schedule():
    """Bands 16, 16, 24 (replay 2), 32, 32: five epochs at R = 32."""
    stages = [StageSpec(16, 0.0, 1 / 3), StageSpec(24, 4.0, 1 / 3, replay=2), StageSpec(32, 9.0, 1 / 3)]
    return Curriculum(stages, budget=6, resolution=32, split="epochs")


def dali_example_train(train_loader, batch_size):
    """The body of DALI's ResNet-50 example's train(), as written for DALIClassificationIterator."""
    seen = []
    for i, data in enumerate(train_loader):
        assert i == len(seen)  # the example's batch counter
        input = data[0]["data"]
        target = data[0]["label"].squeeze(-1).long()
        train_loader_len = int(math.ceil(train_loader._size / batch_size))
        seen.append((tuple(input.shape), target, train_loader_len))
    return seen


def test_a_dali_training_loop_runs_unchanged_and_follows_the_schedule(demo_root):
    cur = schedule()
    train_loader = DALIStyleIterator(CurriculumLoader(demo_root, cur, batch_size=16, device="cpu"))
    for epoch in range(cur.total_epochs):
        train_loader.set_epoch(epoch)  # the one added line
        seen = dali_example_train(train_loader, 16)
        band = cur.stage_at(epoch).band
        assert len(seen) == len(train_loader) == seen[0][2] == (12 if band == 24 else 6)  # replay 2: 8 fresh a step
        train_loader.reset()
        assert {shape for shape, _, _ in seen} == {(16, 3, band, band)}
        assert all(t.dtype == torch.int64 and t.shape == (16,) and 0 <= t.min() and t.max() < 4 for _, t, _ in seen)
    assert train_loader.size == 6 * 16


def test_reset_walks_the_schedule_and_ends_after_its_last_epoch(unique_list):
    cur = schedule()
    it = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu"), ["img", "cls"])
    bands = []
    for epoch in range(cur.total_epochs):
        batches = list(it)  # from epoch 1 on, iter() resets the used iterator (as DALI's does) or reset() did
        assert len(batches) == len(it)
        bands.append(batches[0][0]["img"].shape[-1])
        labels = torch.cat([b[0]["cls"] for b in batches])
        assert labels.shape[1] == 1 and set(labels[:, 0].tolist()) == set(range(40))
        with pytest.raises(StopIteration):
            next(it)  # still ended until reset()
        if epoch % 2:
            it.reset()
    assert bands == [cur.stage_at(e).band for e in range(cur.total_epochs)]
    assert list(it) == []  # the schedule is over


def test_auto_reset_and_a_reset_before_the_end_is_ignored(unique_list):
    cur = schedule()
    it = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu"), auto_reset=True)
    next(it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        it.reset()
    assert "ignored" in str(caught[0].message) and it.epoch == 0
    n0 = len(it)
    assert len([b for b in it]) == n0 - 1  # the rest of epoch 0
    assert it.epoch == 1  # auto_reset moved on, no reset() needed
    n1 = len(it)
    assert len(list(it)) == n1 and it.epoch == 2


def labels_of(batches, key="label"):
    return torch.cat([b[0][key][:, 0] for b in batches]).tolist()


def test_last_batch_policies(unique_list):
    """40 images, batches of 12: FILL repeats 8 from the start of the part, DROP leaves the last
    batch out, PARTIAL gives it without the repeats. With replay 2 (6 fresh a step): 2 repeats."""
    cur = schedule()
    runs = {}
    for policy in ("FILL", "DROP", "PARTIAL"):
        it = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=12, device="cpu", echo="tensor"),
                               last_batch_policy=policy)
        runs[policy] = (len(it), it.size, [[b for b in it]])
        it.reset()
        it.set_epoch(2)  # the replay stage
        runs[policy] += (len(it), it.size, [b for b in it])
    (fill_len, fill_size, [fill]), (drop_len, drop_size, [drop]), (part_len, part_size, [part]) = \
        (runs[p][:3] for p in ("FILL", "DROP", "PARTIAL"))
    assert (fill_len, fill_size, len(fill)) == (4, 48, 4) and len(set(labels_of(fill))) == 40
    assert (drop_len, drop_size, len(drop)) == (3, 36, 3) and len(set(labels_of(drop))) == 36
    assert (part_len, part_size, len(part)) == (4, 40, 4) and sorted(labels_of(part)) == list(range(40))
    assert part[-1][0]["data"].shape[0] == 4
    fill_r, drop_r, part_r = (runs[p][3:] for p in ("FILL", "DROP", "PARTIAL"))
    assert fill_r[:2] == (7, 84) and drop_r[:2] == (6, 72) and part_r[:2] == (7, 82)
    assert len(part_r[2][-1][0]["label"]) == 10  # 4 fresh + 6 replayed
    fresh = [b[0]["label"][:6, 0] for b in part_r[2][:-1]] + [part_r[2][-1][0]["label"][:4, 0]]
    assert sorted(torch.cat(fresh).tolist()) == list(range(40))


def test_dali_last_batch_policy_enum_is_accepted(unique_list):
    loader = CurriculumLoader(unique_list, schedule(), batch_size=12, device="cpu")
    assert DALIStyleIterator(loader, last_batch_policy=LastBatchPolicy.PARTIAL).last_batch_policy == "PARTIAL"


def test_bad_arguments_are_clear_errors(unique_list):
    loader = CurriculumLoader(unique_list, schedule(), batch_size=8, device="cpu")
    with pytest.raises(ValueError, match="output_map"):
        DALIStyleIterator(loader, ["data"])
    with pytest.raises(ValueError, match="last_batch_policy"):
        DALIStyleIterator(loader, last_batch_policy="pad")
    with pytest.raises(ValueError, match="auto_reset"):
        DALIStyleIterator(loader, auto_reset="sometimes")
    big = CurriculumLoader(unique_list, schedule(), batch_size=64, device="cpu")
    with pytest.raises(RuntimeError, match="DROP"):
        next(DALIStyleIterator(big, last_batch_policy="DROP"))


def test_resume_through_the_iterator(unique_list):
    cur = schedule()
    a = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu"))
    a.set_epoch(1)
    first = [next(a) for _ in range(2)]
    state = a.state_dict()
    rest = [b for b in a]
    b = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu"))
    b.load_state_dict(state)
    b.set_epoch(1)  # right after a restore, the restored epoch continues where it stood
    again = [x for x in b]
    assert len(first) + len(rest) == len(a) and len(again) == len(rest)
    assert all(torch.equal(x[0]["label"], y[0]["label"]) for x, y in zip(rest, again))


def test_import_stays_light_and_the_loaders_are_top_level_names():
    code = ("import sys, etpp_dali; assert 'torch' not in sys.modules and 'nvidia.dali' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('torch', 'nvidia')))[:5]; "
            "from etpp_dali import CurriculumLoader, ValidationLoader; import etpp_dali.loader.loaders as L; "
            "assert CurriculumLoader is L.CurriculumLoader and ValidationLoader is L.ValidationLoader")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_a_stage_batch_reaches_the_iterators_batch_size_and_size(unique_list):
    # 40 images: stage 0 at the loader's batch 8 (5 steps), stage 1 at its own batch 4 (10 steps)
    stages = [StageSpec(16, 0.0, 0.5), StageSpec(32, 9.0, 0.5, batch=4)]
    cur = Curriculum(stages, budget=2, resolution=32, split="epochs")
    it = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=8, device="cpu"))
    for epoch, (batch, steps) in enumerate(((8, 5), (4, 10))):
        it.set_epoch(epoch)
        batches = list(it)
        assert it.batch_size == batch and len(batches) == len(it) == steps and it.size == 40
        assert {b[0]["data"].shape[0] for b in batches} == {batch}


def test_an_echo_epoch_has_no_padding_under_any_policy(unique_list):
    # echo before augmentation: the replay-2 stage's ceil(40 / 6) = 7 steps of 12 are 84 uses of 42
    # decoded images (40 and 2 of a further pass), none of them a pad, so every policy gives them all
    cur = schedule()
    for policy in ("FILL", "DROP", "PARTIAL"):
        it = DALIStyleIterator(CurriculumLoader(unique_list, cur, batch_size=12, device="cpu"),
                               last_batch_policy=policy)
        it.set_epoch(2)
        batches = list(it)
        assert it.loader.echoes(2) and len(batches) == len(it) == 7 and it.size == 84
        assert {b[0]["data"].shape[0] for b in batches} == {12}
