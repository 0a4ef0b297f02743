"""Per-stage batches with gradient accumulation: the rule, the checks, and a split batch that
trains as the whole one."""

import json
import signal
from pathlib import Path

import pytest
import torch

from etpp_dali.curriculum.batching import BatchError, auto_stage_batch, resolve_stage_batches
from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.train.config import RecipeError, TrainConfig
from etpp_dali.train.models import unwrap_model
from etpp_dali.train.trainer import Trainer, train

TWO_STAGES = """
split: epochs
budget: 4
resolution: 64
stages:
  - {band: 32, magnitude: 0}
  - {band: 64, magnitude: 4}
"""


def two_stage_file(tmp_path: Path) -> Path:
    path = tmp_path / "two.yaml"
    path.write_text(TWO_STAGES)
    return path


def test_auto_scales_with_the_inverse_area_and_divides_the_global_batch():
    assert auto_stage_batch(64, 64, 64, per_device=256) == 64
    assert auto_stage_batch(64, 32, 64, per_device=256) == 256  # 64 x 4
    assert auto_stage_batch(64, 46, 64, per_device=256) == 128  # 123.9: the nearest divisor of 256 by ratio
    assert auto_stage_batch(64, 56, 64, per_device=256) == 64   # 83.6: nearer 64 than 128 by ratio
    assert auto_stage_batch(64, 56, 64, per_device=384) == 96   # a global batch with more divisors
    assert auto_stage_batch(64, 28, 64, per_device=256) == 256  # 334 capped at the global batch
    assert auto_stage_batch(64, 28, 64, per_device=256, cap=200) == 128
    cur = Curriculum.preset("etpp", budget=12, resolution=64)
    auto = resolve_stage_batches(cur, batch_size=64, global_batch=256, stage_batch="auto")
    assert [s.batch for s in auto.stages] == [256, 256] + [128] * 4 + [0] * 4  # 0: the run's batch
    assert [s.epochs for s in auto.stages] == [s.epochs for s in cur.stages]
    assert auto.total_compute == cur.total_compute
    two = resolve_stage_batches(cur, batch_size=32, global_batch=256, world=2, stage_batch="auto")
    assert [s.batch for s in two.stages][:2] == [128, 128]  # 256 / 2 devices at most
    assert resolve_stage_batches(cur, batch_size=64) is cur  # nothing asked: the same schedule


def test_a_stage_batch_the_global_batch_does_not_divide_is_one_line_naming_stage_batch_and_world(tmp_path):
    cur = Curriculum.preset("etpp", budget=12, resolution=64)
    with pytest.raises(BatchError, match=r"^stage_batch\[2\]: a per-device batch of 48 on 2 device\(s\) does not "
                                         r"divide the global batch 256"):
        resolve_stage_batches(cur, batch_size=64, global_batch=256, world=2, stage_batch=[0, 0, 48] + [0] * 7)
    with pytest.raises(BatchError, match="one per-device batch for each of the 10 stages"):
        resolve_stage_batches(cur, batch_size=64, stage_batch=[32, 32])
    with pytest.raises(BatchError, match=r"^--batch-size: a per-device batch of 48 on 1 device"):
        resolve_stage_batches(cur, batch_size=48, global_batch=256)
    with pytest.raises(BatchError, match="not a multiple of the 3 devices"):
        resolve_stage_batches(cur, batch_size=64, global_batch=256, world=3)
    schedule = tmp_path / "s.yaml"
    schedule.write_text(TWO_STAGES.replace("magnitude: 4}", "magnitude: 4, batch: 24}"))
    with pytest.raises(RecipeError, match=r"^schedule stages\[1\].batch: a per-device batch of 24 on 1 device"):
        TrainConfig(preset=str(schedule), resolution=64, batch_size=32).curriculum()
    assert len(str(pytest.raises(RecipeError, TrainConfig(stage_batch=[0, 5], preset=str(schedule), resolution=64,
                                                          batch_size=32).curriculum).value).splitlines()) == 1


def test_bad_batch_and_echo_settings_name_the_setting():
    for over, needle in (({"global_batch": 0}, "--global-batch 0"), ({"stage_batch": "big"}, "--stage-batch 'big'"),
                         ({"echo": 0}, "--echo 0"), ({"echo": "often"}, "--echo 'often'"),
                         ({"echo": "auto", "echo_kind": "tensor"}, "echo_kind tensor"),
                         ({"echo_kind": "pixels"}, "echo_kind = 'pixels'"), ({"echo_max": 0}, "echo_max = 0"),
                         ({"echo_buffer_mb": 0}, "echo_buffer_mb = 0"), ({"reprob": 1.5}, "reprob = 1.5")):
        with pytest.raises(RecipeError, match=needle.replace("(", r"\(")) as err:
            TrainConfig(**over).validate()
        assert len(str(err.value).splitlines()) == 1
    assert TrainConfig(echo="off", echo_kind="tensor").loader_echo() == "off"
    assert TrainConfig(echo_kind="tensor").loader_echo() == "tensor"
    assert TrainConfig(echo=3).loader_echo() == 3 and TrainConfig().loader_echo() == "augment"


def test_lr_keys_on_the_global_batch_and_a_baseline_ignores_a_stage_list(tmp_path):
    cfg = TrainConfig(batch_size=64, global_batch=256)
    assert cfg.global_batch_size(1) == 256 and TrainConfig(batch_size=64).global_batch_size(4) == 256
    assert cfg.learning_rate(cfg.global_batch_size(1)) == pytest.approx(4e-3 * 256 / 4096)
    listed = TrainConfig(preset=str(two_stage_file(tmp_path)), resolution=64, batch_size=32, stage_batch=[0, 16])
    assert [s.batch for s in listed.curriculum().stages] == [0, 16]
    baseline = TrainConfig(preset=str(two_stage_file(tmp_path)), resolution=64, batch_size=32, stage_batch=[0, 16],
                           baseline=True, baseline_budget=2)
    assert [s.batch for s in baseline.curriculum().stages] == [0]


class ImagesByIndex:
    """A stand-in for the training loader: image i of epoch e is the same tensor whatever the
    batch size, so a batch of 32 holds exactly the images of two batches of 16 (the real loader
    draws its augmentation per batch, so only its order, not its pixels, is batch-free)."""

    def __init__(self, curriculum: Curriculum, batch_size: int, images: int = 64, classes: int = 4) -> None:
        self.curriculum, self.batch_size, self.images, self.classes = curriculum, batch_size, images, classes
        self.epoch = self.step = 0
        self.wait_seconds = 0.0

    def batch_for_epoch(self, epoch: int) -> int:
        return self.curriculum.stage_at(epoch).batch or self.batch_size

    def batches_in_epoch(self, epoch: int | None = None) -> int:
        return -(-self.images // self.batch_for_epoch(self.epoch if epoch is None else epoch))

    def echo_factor(self, epoch: int | None = None) -> int:
        return 1  # every image fresh

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.step = epoch, 0

    def __iter__(self):
        band = self.curriculum.stage_at(self.epoch).band
        gen = torch.Generator().manual_seed(1000 + self.epoch)
        x, y = torch.randn(self.images, 3, band, band, generator=gen), torch.arange(self.images) % self.classes
        b = self.batch_for_epoch(self.epoch)
        while self.step < self.batches_in_epoch():
            self.step += 1
            yield x[(self.step - 1) * b:self.step * b], y[(self.step - 1) * b:self.step * b]

    def state_dict(self):
        return {"epoch": self.epoch, "step": self.step}

    def close(self):
        pass


def run_with_fake_loader(cfg: TrainConfig):
    """Train ``cfg`` on :class:`ImagesByIndex`; returns the weights and, per optimiser step, its
    images and learning rate."""
    trainer = Trainer(cfg)
    trainer.train_loader.close()
    trainer.train_loader = ImagesByIndex(trainer.curriculum, cfg.batch_size)
    steps, pending = [], []
    real_step = trainer.optim.step

    def counting_step(images, labels, **kwargs):
        pending.append(len(labels))
        loss = real_step(images, labels, **kwargs)
        if kwargs.get("last", True):
            steps.append((sum(pending), trainer.optim.optimizer.param_groups[0]["lr"]))
            pending.clear()
        return loss

    trainer.optim.step = counting_step
    try:
        trainer.run()
    finally:
        trainer.close()
    weights = {k: v.clone() for k, v in unwrap_model(trainer.model).state_dict().items()}
    return weights, steps, trainer.history


def test_batch_16_with_accumulation_2_trains_as_batch_32(demo_root, tmp_path):
    """Two stages; the second at 16 x 2 against 32 throughout: the same optimiser steps, each
    on the same 32 images at the same learning rate, and (a model without batch statistics, no
    dropout) the same weights after the stage."""
    common = dict(data=str(demo_root), model="test_convnext", preset=str(two_stage_file(tmp_path)), resolution=64,
                  batch_size=32, lr=2e-3, warmup_epochs=0.5, progress=False, threads=2, val_every=10, seed=3)
    whole, whole_steps, whole_log = run_with_fake_loader(TrainConfig(**common, output=str(tmp_path / "whole")))
    split, split_steps, split_log = run_with_fake_loader(
        TrainConfig(**common, stage_batch=[0, 16], output=str(tmp_path / "split")))
    assert len(whole_steps) == len(split_steps) == 4 * 2  # 4 epochs of 64 images at 32 a step
    assert [n for n, _ in split_steps] == [n for n, _ in whole_steps] == [32] * 8
    assert [lr for _, lr in split_steps] == pytest.approx([lr for _, lr in whole_steps], rel=1e-12)
    assert [(r["batch"], r["accumulation"]) for r in split_log] == [(32, 1)] * 2 + [(16, 2)] * 2
    assert [r["compute_fraction"] for r in split_log] == [r["compute_fraction"] for r in whole_log]
    assert [r["loss"] for r in split_log] == pytest.approx([r["loss"] for r in whole_log], rel=1e-4)
    for key, value in whole.items():
        assert torch.allclose(split[key], value, rtol=1e-4, atol=1e-5), key


def test_an_incomplete_last_group_steps_on_the_mean_of_what_it_holds(demo_root, tmp_path):
    """48 images at 16 x 2: the third micro-batch is a group of its own, its loss not halved."""
    cfg = TrainConfig(data=str(demo_root), model="test_convnext", preset=str(two_stage_file(tmp_path)), resolution=64,
                      batch_size=32, stage_batch=[16, 16], lr=2e-3, progress=False, threads=2, val_every=10,
                      output=str(tmp_path / "odd"))
    trainer = Trainer(cfg)
    trainer.train_loader.close()
    trainer.train_loader = ImagesByIndex(trainer.curriculum, 32, images=48)
    calls = []
    real_step = trainer.optim.step
    trainer.optim.step = lambda x, y, **kw: calls.append(kw) or real_step(x, y, **kw)
    try:
        trainer._train_epoch(0, trainer.curriculum.stage_at(0), None)
    finally:
        trainer.close()
    assert calls == [{"micro_batches": 2, "last": False}, {"micro_batches": 2, "last": True},
                     {"micro_batches": 1, "last": True}]


def test_history_rows_carry_batch_accumulation_and_eval_time(demo_root, tmp_path):
    cfg = TrainConfig(data=str(demo_root), model="test_convnext", preset=str(two_stage_file(tmp_path)), resolution=64,
                      batch_size=32, stage_batch=[0, 16], lr=2e-3, progress=False, threads=2, val_every=2,
                      output=str(tmp_path / "rows"))
    _, _, log = run_with_fake_loader(cfg)
    rows = [json.loads(line) for line in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(log))
    assert [("eval_s" in r, "top1" in r) for r in rows] == [(False, False), (True, True)] * 2
    assert all(r["eval_s"] > 0 for r in rows if "eval_s" in r)


def resnet_run(demo_root, tmp_path, name, **over):
    """timm's test_resnet on the small demo set (96 train images) through the real loader."""
    values = dict(data=str(demo_root), model="test_resnet", preset=str(two_stage_file(tmp_path)), resolution=64,
                  batch_size=32, lr=2e-3, warmup_epochs=0.5, progress=False, threads=2, val_every=2,
                  output=str(tmp_path / name))
    values.update(over)
    return TrainConfig(**values)


def test_the_loader_serves_each_stage_its_batch_and_the_steps_follow_the_global_batch(demo_root, tmp_path):
    steps = {}
    for name, over in (("whole", {}), ("split", {"stage_batch": [0, 16]})):
        trainer = Trainer(resnet_run(demo_root, tmp_path, name, **over))
        loader, sizes, pending = trainer.train_loader, [], []
        real_step = trainer.optim.step

        def step(images, labels, _real=real_step, _loader=loader, _sizes=sizes, _pending=pending, **kwargs):
            _pending.append(len(labels))
            if kwargs.get("last", True):
                _sizes.append((_loader.epoch, sum(_pending)))
                _pending.clear()
            return _real(images, labels, **kwargs)

        trainer.optim.step = step
        assert [loader.batches_in_epoch(e) for e in range(4)] == ([3] * 4 if name == "whole" else [3, 3, 6, 6])
        loader.set_epoch(2)
        assert (len(loader), loader.batch_for_epoch()) == ((3, 32) if name == "whole" else (6, 16))
        try:
            trainer.run()
        finally:
            trainer.close()
        steps[name] = sizes
    assert steps["split"] == steps["whole"] == [(e, 32) for e in range(4) for _ in range(3)]


def test_a_run_stopped_in_either_stage_resumes_to_the_uninterrupted_result(demo_root, tmp_path):
    """Ctrl-C in stage 0 (batch 32) and again mid-group in stage 1 (16 x 2): each checkpoint
    lands at the end of an accumulation group, and the resumed run ends with the weights and
    log of a run never stopped."""
    train(resnet_run(demo_root, tmp_path, "straight", stage_batch=[0, 16]))
    cfg = resnet_run(demo_root, tmp_path, "stopped", stage_batch=[0, 16])
    for resume, stop_at, saved_at in ((None, (1, 2), (1, 2)), (True, (3, 3), (3, 4))):
        trainer = Trainer(cfg, resume=resume)
        real_step = trainer.optim.step

        def ctrl_c_at(images, labels, _real=real_step, _loader=trainer.train_loader, _at=stop_at, **kwargs):
            if (_loader.epoch, _loader.step) == _at:  # the signal lands before this micro-batch's step
                signal.raise_signal(signal.SIGINT)
            return _real(images, labels, **kwargs)

        trainer.optim.step = ctrl_c_at
        try:
            assert trainer.run()["interrupted"]
        finally:
            trainer.close()
        ckpt = torch.load(Path(cfg.output) / "last.pt", weights_only=True)
        assert (ckpt["loader"]["epoch"], ckpt["loader"]["step"]) == saved_at
    train(cfg, resume=True)
    straight, stopped = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("straight", "stopped"))
    for key, value in straight["model"].items():
        assert torch.allclose(stopped["model"][key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    for a, b in zip(straight["history"], stopped["history"]):
        assert (a["epoch"], a["images"], a["batch"], a["accumulation"]) == (b["epoch"], b["images"], b["batch"],
                                                                            b["accumulation"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a.get("top1") == b.get("top1")
