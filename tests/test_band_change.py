"""A Swin across band changes: its relative-position tables are resized in place, so the
optimiser, the EMA, DDP and checkpoints keep following them."""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tiny_swin
import torch
from timm.layers import resize_rel_pos_bias_table

from etpp_dali.train.config import TrainConfig
from etpp_dali.train.models import (
    adapt_model_to_band,
    build_model,
    check_model_takes_bands,
    create_model,
    model_at_band,
    model_band,
    unwrap_model,
)
from etpp_dali.train.optimisation import Optimisation
from etpp_dali.train.trainer import Trainer

CPU = torch.device("cpu")
LOW, HIGH = tiny_swin.BANDS


def swin_config(tmp_path, **over):
    values = dict(model=tiny_swin.NAME, preset=str(tiny_swin.write_schedule(tmp_path)),
                  resolution=tiny_swin.RESOLUTION, batch_size=16, lr=2e-3, warmup_epochs=0.0, progress=False,
                  threads=2, output=str(tmp_path / "run"))
    values.update(over)
    return TrainConfig(**values)


def tables(model):
    return {n: p for n, p in unwrap_model(model).named_parameters() if n.endswith("relative_position_bias_table")}


def batch(band, n=8):
    gen = torch.Generator().manual_seed(band)
    return torch.randn(n, 3, band, band, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def test_a_band_change_keeps_every_parameter_in_the_optimiser_and_learning(tmp_path):
    cfg = swin_config(tmp_path, ema=True)
    cur = cfg.curriculum()
    model, _ = build_model(cfg, cur, num_classes=4, device=CPU)
    optim = Optimisation(cfg, model, cur, num_classes=4, device=CPU)
    assert model_band(optim.model) == LOW
    optim.step(*batch(LOW))
    objects = {id(p) for p in unwrap_model(optim.model).parameters()}
    moments = {n: {k: v.clone() for k, v in optim.optimizer.state[p].items()} for n, p in tables(optim.model).items()}
    small = {n: p.shape for n, p in tables(optim.model).items()}

    optim.set_band(HIGH)
    model = unwrap_model(optim.model)
    assert model_band(model) == HIGH and len(tables(model)) == 4
    assert all(p.shape[0] > small[n][0] for n, p in tables(model).items())  # windows 2 -> 3: 9 -> 25 rows
    in_optimiser = [id(p) for g in optim.optimizer.param_groups for p in g["params"]]
    assert sorted(in_optimiser) == sorted(objects) == sorted(id(p) for p in model.parameters())
    for name, param in tables(model).items():  # Adam's moments resized as the table was
        state = optim.optimizer.state[param]
        window = model.get_submodule(name.rsplit(".", 1)[0]).window_size
        expected = _resize(moments[name]["exp_avg"], (2, 2), window, param.shape)
        assert torch.equal(state["exp_avg"], expected)
        assert state["exp_avg_sq"].shape == param.shape and bool((state["exp_avg_sq"] >= 0).all())
        assert torch.equal(state["step"], moments[name]["step"])
    ema_shapes = {k: v.shape for k, v in optim.ema.module.state_dict().items()}
    assert ema_shapes == {k: v.shape for k, v in model.state_dict().items()}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim.step(*batch(HIGH))
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def _resize(tensor, old_window, new_window, shape):
    with warnings.catch_warnings():  # torch's own deprecation notes inside timm's interpolation
        warnings.simplefilter("ignore", UserWarning)
        return resize_rel_pos_bias_table(tensor, new_window_size=new_window, new_bias_shape=shape,
                                         old_window_size=old_window)


def test_checking_the_bands_leaves_the_model_as_it_was():
    model = create_model(tiny_swin.NAME, num_classes=4, drop_path=0.0)
    before = {n: (id(p), p.detach().clone()) for n, p in model.named_parameters()}
    windows = [b.attn.window_size for layer in model.layers for b in layer.blocks]
    check_model_takes_bands(model, [LOW, HIGH], CPU, torch.contiguous_format)
    after = {n: (id(p), p) for n, p in model.named_parameters()}
    assert {n: i for n, (i, _) in after.items()} == {n: i for n, (i, _) in before.items()}
    assert all(torch.equal(before[n][1], p) for n, (_, p) in after.items())
    assert [b.attn.window_size for layer in model.layers for b in layer.blocks] == windows
    assert model.training


def test_evaluating_at_full_size_runs_a_copy_and_leaves_the_training_weights():
    model = create_model(tiny_swin.NAME, num_classes=4, drop_path=0.0)
    adapt_model_to_band(model, LOW)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    full = model_at_band(model, HIGH)
    assert full is not model and model_band(full) == HIGH and model_band(model) == LOW
    assert full(torch.zeros(1, 3, HIGH, HIGH)).shape == (1, 4)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model_at_band(model, LOW) is model
    convnet = create_model("test_resnet", num_classes=4, drop_path=0.0)
    assert model_band(convnet) is None and model_at_band(convnet, HIGH) is convnet


def _interrupt_at(trainer, epoch, step):
    """Make ``trainer`` get a Ctrl-C right after ``step`` of ``epoch``."""
    real_step = trainer.optim.step

    def step_then_ctrl_c(images, labels, **kwargs):
        loss = real_step(images, labels, **kwargs)
        if (trainer.train_loader.epoch, trainer.train_loader.step) == (epoch, step):
            signal.raise_signal(signal.SIGINT)
        return loss

    trainer.optim.step = step_then_ctrl_c


def _run(cfg, resume=None, stop_at=None):
    trainer = Trainer(cfg, resume=resume)
    if stop_at:
        _interrupt_at(trainer, *stop_at)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return summary, torch.load(Path(cfg.output) / "last.pt", weights_only=True)


def test_resume_across_band_changes_gives_the_weights_of_an_uninterrupted_run(demo_root, tmp_path):
    """Stopped at the end of the low band's last epoch (resumed into the high band), then inside
    the high band (resumed by a process whose model starts at the low band)."""
    common = dict(data=str(demo_root), ema=True, ema_decay=0.9)
    _, whole = _run(swin_config(tmp_path, output=str(tmp_path / "whole"), **common))
    assert [r["band"] for r in whole["history"]] == [LOW, LOW, HIGH] and whole["band"] == HIGH

    cfg = swin_config(tmp_path, output=str(tmp_path / "parts"), **common)
    summary, first = _run(cfg, stop_at=(1, 6))
    assert summary["interrupted"] and first["band"] == LOW and len(first["history"]) == 2
    summary, second = _run(cfg, resume=True, stop_at=(2, 3))
    assert summary["interrupted"] and second["band"] == HIGH and second["loader"]["step"] == 3
    summary, last = _run(cfg, resume=True)
    assert not summary["interrupted"]
    for key in ("model", "ema"):
        assert last[key].keys() == whole[key].keys()
        assert all(torch.equal(last[key][k], whole[key][k]) for k in whole[key]), key
    for index, state in whole["optimizer"]["state"].items():
        assert all(torch.equal(last["optimizer"]["state"][index][k], v) for k, v in state.items())
    assert [r["loss"] for r in last["history"]] == [r["loss"] for r in whole["history"]]


@pytest.mark.slow
def test_ddp_two_cpu_processes_cross_a_swin_band_change(demo_root, tmp_path):
    out = tmp_path / "ddp"
    schedule = tiny_swin.write_schedule(tmp_path)
    worker = Path(__file__).with_name("swin_ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(demo_root), str(schedule), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["band"] for r in rows] == [LOW, LOW, HIGH] and rows[-1]["val_images"] == 24
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(r["tables_in_optimiser"] for r in ranks)
    assert ranks[0]["model"].keys() == ranks[1]["model"].keys()
    assert all(torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]) for k in ranks[0]["model"])  # in sync
    moved = [k for k in ranks[0]["model"] if k.endswith("relative_position_bias_table")
             and not torch.equal(ranks[0]["model"][k], ranks[0]["at_high_band"][k])]
    assert len(moved) == 4  # the tables learnt at the high band


def _step_across_the_band_change(optim):
    """A step at each band; returns the names of parameters the second step left unchanged."""
    optim.step(*(t.to(optim.device) for t in batch(LOW)))
    optim.set_band(HIGH)
    model = unwrap_model(optim.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim.step(*(t.to(optim.device) for t in batch(HIGH)))
    return [n for n, p in model.named_parameters() if torch.equal(p, before[n])]


def test_the_fused_adamw_of_a_gpu_run_takes_the_resized_moments(tmp_path):
    cfg = swin_config(tmp_path)
    cur = cfg.curriculum()
    model, _ = build_model(cfg, cur, num_classes=4, device=CPU)
    optim = Optimisation(cfg, model, cur, num_classes=4, device=CPU)
    optim.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # what CUDA gets
    assert _step_across_the_band_change(optim) == []


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_a_swin_crosses_a_band_change_on_the_gpu(tmp_path, amp):
    cfg = swin_config(tmp_path, amp=amp, ema=True, clip_grad=5.0, channels_last=True)
    cur, gpu = cfg.curriculum(), torch.device("cuda")
    model, _ = build_model(cfg, cur, num_classes=4, device=gpu)
    optim = Optimisation(cfg, model, cur, num_classes=4, device=gpu)
    assert optim.optimizer.defaults["fused"]
    if optim.scaler is not None:  # a modest scale: an overflow would skip a step and leave the weights
        optim.scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 8)
    assert _step_across_the_band_change(optim) == []
    assert all(p.is_cuda and p.shape == optim.optimizer.state[p]["exp_avg"].shape
               for p in unwrap_model(optim.model).parameters())
