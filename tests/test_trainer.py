import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import etpp_dali.train.data as train_data
import etpp_dali.train.trainer as trainer_module
from etpp_dali.cli import main
from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.train import checkpoint
from etpp_dali.train.config import RecipeError, TrainConfig, load_recipe
from etpp_dali.train.distributed import cuda_index_for_rank
from etpp_dali.train.evaluation import eval_counts
from etpp_dali.train.models import adapt_model_to_band, build_model, check_model_takes_bands, create_model
from etpp_dali.train.trainer import Trainer, train

pytest.importorskip("nvidia.dali")
ROOT = Path(__file__).resolve().parents[1]


def tiny(demo_root, tmp_path, **over):
    """A run of a few seconds: timm's test_resnet at R = 32 on the small demo set."""
    values = dict(data=str(demo_root), model="test_resnet", preset="etpp", budget=2, resolution=32, batch_size=16,
                  lr=2e-3, warmup_epochs=0.2, output=str(tmp_path / "run"), progress=False, threads=2)
    values.update(over)
    return TrainConfig(**values)


def epochs_in_log(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_run_writes_log_checkpoints_plot_and_summary(demo_root, tmp_path):
    cfg = tiny(demo_root, tmp_path, val_every=2, ema=True, mixup=0.2, smoothing=0.1)
    summary = train(cfg)
    run = Path(cfg.output)
    total = cfg.curriculum().total_epochs
    assert epochs_in_log(run) == list(range(total))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"band", "magnitude", "loss", "lr", "images_per_s", "data_wait", "time"} <= set(r) for r in rows)
    assert "top1" in rows[-1] and "ema_top1" in rows[-1]
    assert summary["epochs_done"] == total and summary["top1"] is not None
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "ema", "loader", "rng", "schedule", "history"} <= set(ckpt)
    stages = sorted(p.name for p in run.glob("stage*.pt"))
    assert len(stages) == sum(1 for s in cfg.curriculum().stages if s.epochs)
    assert json.loads((run / "summary.json").read_text())["epochs"] == total


def test_the_seed_makes_a_run_with_mixup_repeatable(demo_root, tmp_path):
    def losses(name):
        cfg = tiny(demo_root, tmp_path, budget=1, mixup=0.4, cutmix=1.0, drop_path=0.1, output=str(tmp_path / name))
        train(cfg)
        return [json.loads(line)["loss"] for line in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]

    assert losses("a") == losses("b")


def test_lr_follows_compute_with_warmup_and_cosine(demo_root, tmp_path):
    trainer = Trainer(tiny(demo_root, tmp_path, warmup_epochs=0.5))
    optim = trainer.optim
    try:
        assert optim.lr_at(0.0) == 0.0
        w = optim.warmup
        assert w == pytest.approx(trainer.curriculum.warmup_fraction(0.5))
        assert optim.lr_at(w / 2) == pytest.approx(optim.lr / 2)
        assert optim.lr_at(w) == pytest.approx(optim.lr)
        assert optim.lr_at(1.0) == pytest.approx(trainer.cfg.min_lr)
        values = [optim.lr_at(f / 100) for f in range(101)]
        peak = values.index(max(values))
        assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))
    finally:
        trainer.close()


def test_lr_scales_with_batch():
    assert TrainConfig(batch_size=1024).learning_rate(1024) == pytest.approx(1e-3)
    assert TrainConfig(lr=0.5).learning_rate(1024) == 0.5


def test_bad_inputs_are_one_line_errors(demo_root, tmp_path):
    cases = [
        (dict(data=str(tmp_path / "nowhere")), "no such path"),
        (dict(model="resnet_9000"), "is not a timm model"),
        (dict(amp="fp8"), "--amp 'fp8'"),
        (dict(preset="nope.yaml"), "neither a preset .* nor a schedule file"),
        (dict(model="test_vit", resolution=40), "cannot take"),
    ]
    for over, needle in cases:
        with pytest.raises(RecipeError, match=needle) as info:
            Trainer(tiny(demo_root, tmp_path, **over))
        assert "\n" not in str(info.value)
    flat = tmp_path / "flat"
    (flat / "a").mkdir(parents=True)
    for img in list((demo_root / "train" / "class_00").iterdir())[:3]:
        (flat / "a" / img.name).write_bytes(img.read_bytes())
    (flat / "b").mkdir()
    for img in list((demo_root / "train" / "class_01").iterdir())[:3]:
        (flat / "b" / img.name).write_bytes(img.read_bytes())
    (tmp_path / "d" / "train").mkdir(parents=True)
    os.rename(flat / "a", tmp_path / "d" / "train" / "a")
    os.rename(flat / "b", tmp_path / "d" / "train" / "b")
    with pytest.raises(RecipeError, match="has no val/ split"):
        Trainer(tiny(tmp_path / "d", tmp_path))
    trainer = Trainer(tiny(tmp_path / "d", tmp_path, val_split=0.34))  # a held-out split instead
    assert len(trainer.val_loader.source) == 2 and len(trainer.train_loader.source) == 4
    trainer.close()


# data epochs of each shipped recipe's schedule: the baselines' 300, the etpp presets' at E = 200
RECIPE_EPOCHS = {"convnext_tiny_baseline": 300, "convnext_tiny_etpp": 315, "deit_small_baseline": 300,
                 "deit_small_etpp": 468, "demo": 26, "resnet50_baseline": 300, "resnet50_etpp": 454,
                 "swin_tiny_baseline": 300, "swin_tiny_etpp": 454, "mae_demo": 39, "mae_vit_base_etpp": 938,
                 "mae_vit_base_baseline": 400}


def test_recipes_parse_and_reject_unknown_keys(tmp_path):
    epochs = {}
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        values = load_recipe(path)
        cfg = TrainConfig(**values)
        cur = cfg.curriculum()
        assert isinstance(cur, Curriculum), path.name
        epochs[path.stem] = cur.total_epochs
    assert epochs == RECIPE_EPOCHS
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: resnet50\nbatchsize: 12\n")
    with pytest.raises(RecipeError, match="unknown key 'batchsize'"):
        load_recipe(bad)
    bad.write_text("schedule: {preset: etpp, epochs: 3}\n")
    with pytest.raises(RecipeError, match="unknown key schedule.'epochs'"):
        load_recipe(bad)


def test_paper_recipes_reproduce_the_schedules():
    rows = {p.stem: TrainConfig(**load_recipe(p)) for p in (ROOT / "pipelines").glob("*.yaml")}
    resnet = rows["resnet50_etpp"]
    assert resnet.model == "resnet50" and resnet.curriculum().total_epochs == 454
    assert rows["resnet50_baseline"].curriculum().total_epochs == 300
    assert rows["convnext_tiny_etpp"].curriculum().total_epochs == 315
    assert rows["deit_small_etpp"].warmup_fraction == 0.2
    assert rows["swin_tiny_etpp"].curriculum().speedup() == pytest.approx(1.5, abs=0.02)


def test_cli_flags_override_the_recipe_and_refuse_to_overwrite(demo_root, tmp_path):
    out = tmp_path / "cli"
    args = ["train", "--data", str(demo_root), "--model", "test_resnet", "--resolution", "32", "--budget", "1",
            "--batch-size", "16", "--output", str(out), "--no-progress", "--threads", "2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "top-1" in res.output and "compute:" in res.output
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert cfg["model"] == "test_resnet" and cfg["resolution"] == 32
    before = (out / "last.pt").read_bytes()
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "holds a run already" in res.output
    assert (out / "last.pt").read_bytes() == before  # nothing written over
    res = CliRunner().invoke(main, ["train", "--recipe", "nope"])
    assert res.exit_code != 0 and "no such file or recipe" in res.output


def test_ctrl_c_mid_epoch_checkpoints_that_batch_and_resume_finishes_the_epoch(demo_root, tmp_path):
    """SIGINT at batch 3 of epoch 1 must give a checkpoint *inside* epoch 1 (not epoch 1's end,
    not epoch 0's), and the resumed run must finish epoch 1 from batch 3."""
    cfg = tiny(demo_root, tmp_path, preset="et", budget=3, batch_size=4, val_every=3)
    run = Path(cfg.output)
    trainer = Trainer(cfg)
    steps = trainer.train_loader.batches_in_epoch(1)
    assert trainer.curriculum.total_epochs >= 2 and steps > 4
    real_step = trainer.optim.step

    def step_then_ctrl_c(images, labels, **kwargs):
        loss = real_step(images, labels, **kwargs)
        if trainer.train_loader.epoch == 1 and trainer.train_loader.step == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers, handled by the trainer
        return loss

    trainer.optim.step = step_then_ctrl_c
    try:
        assert trainer.run()["interrupted"]
    finally:
        trainer.close()
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["loader"]["epoch"], ckpt["loader"]["step"]) == (1, 3)
    assert ckpt["schedule"]["position"]["epoch"] == 1 and ckpt["schedule"]["position"]["step"] == 3
    assert [r["epoch"] for r in ckpt["history"]] == [0] and epochs_in_log(run) == [0]
    assert ckpt["partial"]["seen"] == 3 * 4
    summary = train(cfg, resume=True)
    assert not summary["interrupted"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(trainer.curriculum.total_epochs))
    assert rows[1]["images"] == rows[0]["images"] == 96  # epoch 1: 3 batches before, the rest after


def _start(args, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "etpp_dali", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_epochs(run: Path, n: int, proc, timeout=240.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run / "metrics.jsonl").exists() and len(epochs_in_log(run)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.05)
    raise AssertionError("training did not get going")


def run_args(demo_root, out, budget="6"):
    return ["--data", str(demo_root), "--model", "test_resnet", "--resolution", "32", "--budget", budget,
            "--preset", "et", "--batch-size", "4", "--output", str(out), "--no-progress", "--threads", "2",
            "--val-every", "3"]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_has_no_gap_or_duplicate(demo_root, tmp_path):
    out = tmp_path / "killed"
    proc = _start(run_args(demo_root, out))
    _wait_for_epochs(out, 2, proc)
    time.sleep(0.35)  # somewhere inside the next epoch
    proc.kill()
    proc.wait()
    done_before = epochs_in_log(out)
    assert done_before == list(range(len(done_before)))
    torch.load(out / "last.pt", weights_only=True)  # the last good checkpoint is intact
    resumed = _start(run_args(demo_root, out) + ["--resume"])
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    total = Curriculum.preset("et", budget=6, resolution=32).total_epochs
    assert epochs_in_log(out) == list(range(total))
    assert "top-1" in output


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_exits_cleanly_and_resume_finishes(demo_root, tmp_path):
    """The whole CLI path; where in an epoch the signal lands depends on timing here, so the
    mid-epoch checkpoint itself is pinned by the test above."""
    out = tmp_path / "interrupted"
    proc = _start(run_args(demo_root, out))
    _wait_for_epochs(out, 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "interrupted" in output
    ckpt = torch.load(out / "last.pt", weights_only=True)
    done = len(ckpt["history"])
    assert epochs_in_log(out) == list(range(done))
    resumed = _start(run_args(demo_root, out) + ["--resume"])
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    total = Curriculum.preset("et", budget=6, resolution=32).total_epochs
    assert epochs_in_log(out) == list(range(total)) and total > done


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo(demo_root, tmp_path):
    out = tmp_path / "ddp"
    args = ["--data", str(demo_root), "--model", "test_resnet", "--resolution", "32", "--budget", "1",
            "--batch-size", "16", "--output", str(out), "--no-progress", "--threads", "1", "--nproc", "2"]
    proc = _start(args)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_images"] == 24  # every val image once across both ranks
    assert all(r["images"] == 96 for r in rows)  # 2 ranks x 48 images each epoch
    assert output.count("top-1") == 1  # rank 0 reports


@pytest.mark.parametrize("name,bands", [("swin_tiny_patch4_window7_224", [96, 160, 224]),
                                        ("test_vit", [64, 96, 160])])
def test_transformers_follow_band_changes(name, bands):
    model = create_model(name, num_classes=3, drop_path=0.0)
    check_model_takes_bands(model, bands, torch.device("cpu"), torch.contiguous_format)
    model.eval()
    with torch.no_grad():
        for band in bands:
            adapt_model_to_band(model, band)
            assert model(torch.zeros(1, 3, band, band)).shape == (1, 3)
    if name.startswith("swin"):
        assert model.layers[0].blocks[0].window_size == (bands[-1] // 32, bands[-1] // 32)


def test_tensorboard_flag_says_what_is_missing_or_logs(demo_root, tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RecipeError, match="pip install tensorboard"):
            Trainer(tiny(demo_root, tmp_path, tensorboard=True))
        return
    train(tiny(demo_root, tmp_path, tensorboard=True))
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_drop_path_scales_by_the_schedule_kind_not_its_name(tmp_path):
    # a schedule file whose name starts with "et" keeps the rate given
    etc = tmp_path / "etc_schedule.yaml"
    etc.write_text("budget: 100\nstages:\n  - {band: 32, magnitude: 9}\n")
    rates = {}
    for label, over in (("etpp", dict(preset="etpp", budget=100)), ("et", dict(preset="et", budget=100)),
                        ("baseline", dict(preset="baseline", budget=100)), ("file", dict(preset=str(etc)))):
        cfg = TrainConfig(model="test_resnet", resolution=32, drop_path=0.2, **over)
        cur = cfg.curriculum()
        assert cur.kind == label
        rates[label] = cfg.drop_path_rate(cur)
    assert rates == pytest.approx({"etpp": 0.1, "et": 0.1, "baseline": 0.2, "file": 0.2})
    # the model is built with that rate (timm's deepest block drops at the full rate)
    cfg = TrainConfig(model="test_resnet", resolution=32, drop_path=0.2, preset=str(etc))
    model, _ = build_model(cfg, cfg.curriculum(), num_classes=3, device=torch.device("cpu"))
    probs = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert probs and max(probs) == pytest.approx(0.2)


_READS = ("item", "tolist", "__float__", "__int__", "__bool__")
_STEP_CODE = ("trainer.py", "optimisation.py", "models.py", "progress.py")


def test_an_epoch_reads_the_device_once_and_ranks_vote_every_sync_every_steps(demo_root, tmp_path, monkeypatch):
    """Each read of a device value makes the host wait for the GPU: the loss adds up on the
    device and is read once an epoch; under DDP the stop vote (a collective) is held every
    SYNC_EVERY steps and at the epoch's last, not every step."""
    trainer = Trainer(tiny(demo_root, tmp_path, batch_size=4))
    steps = trainer.train_loader.batches_in_epoch(0)
    assert steps == 24
    losses, reads, votes = [], [], []
    real_step = trainer.optim.step

    def step(images, labels, **kwargs):
        loss = real_step(images, labels, **kwargs)
        losses.append((loss.clone(), len(labels)))
        return loss

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args):
            if sys._getframe(1).f_code.co_filename.endswith(_STEP_CODE):
                reads.append(name)
            return original(self, *args)
        return read

    trainer.optim.step = step
    monkeypatch.setattr(trainer_module, "SYNC_EVERY", 10)
    monkeypatch.setattr(trainer_module, "is_distributed", lambda: True)
    monkeypatch.setattr(trainer_module, "agree_any",
                        lambda flag, device: votes.append(trainer.train_loader.step) or flag)
    try:
        for name in _READS:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        sums = trainer._train_epoch(0, trainer.curriculum.stage_at(0), None)
        monkeypatch.undo()
    finally:
        trainer.close()
    assert reads == ["__float__"]  # the epoch's loss sum, once
    assert votes == [10, 20, 24]
    assert sums["seen"] == 96
    mean = sum(float(loss) * n for loss, n in losses) / sum(n for _, n in losses)
    assert sums["loss_sum"] / sums["seen"] == pytest.approx(mean, rel=1e-6)


def test_eval_counts_hits_and_loss_on_the_device():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0, -2.0],   # label 1: top-1
                           [5.0, 0.0, 4.0, 3.0, 2.0, 1.0],     # label 2: top-5, not top-1
                           [5.0, 0.0, 4.0, 3.0, 2.0, 1.0]])    # label 1: last, outside the top 5
    labels = torch.tensor([1, 2, 1])
    counts = eval_counts(logits, labels)
    assert counts.dtype == torch.float64 and counts[:2].tolist() == [1.0, 2.0]
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert counts[2].item() == pytest.approx(loss.item())
    few = eval_counts(logits[:, :3], labels)  # fewer than 5 classes: top-5 is the top of all
    assert few[1].item() == 3.0


def test_rng_states_of_more_gpus_than_are_visible_restore_those_there_are(monkeypatch):
    state = checkpoint.rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]  # saved on 4 GPUs
    restored = []

    def set_state(new_state, device="cuda"):
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= 2:
            raise IndexError("list index out of range")  # what torch raises for a GPU not there
        restored.append((index, int(new_state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_state)  # what set_rng_state_all calls
    checkpoint.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


def test_a_rank_maps_onto_the_gpus_it_can_see():
    assert [cuda_index_for_rank(rank, 8) for rank in range(8)] == list(range(8))  # torchrun: every GPU visible
    assert [cuda_index_for_rank(rank, 1) for rank in range(4)] == [0, 0, 0, 0]    # one visible GPU per process
    assert cuda_index_for_rank(5, 4) == 1
    with pytest.raises(RecipeError, match="CUDA_VISIBLE_DEVICES"):
        cuda_index_for_rank(0, 0)


def test_paper_recipes_erase_and_step_on_a_global_batch_the_demo_does_not_erase():
    rows = {p.stem: TrainConfig(**load_recipe(p)) for p in (ROOT / "pipelines").glob("*.yaml")}
    papers = [name for name in rows if name.endswith(("_etpp", "_baseline")) and rows[name].task == "classify"]
    assert len(papers) == 8
    for name in papers:
        cfg = rows[name]
        assert cfg.reprob == 0.25 and cfg.global_batch_size(8) == cfg.batch_size * 8 == 1024, name
        assert cfg.learning_rate(cfg.global_batch_size(1)) == pytest.approx(1e-3), name
    assert rows["demo"].reprob == 0.0
    resnet = rows["resnet50_etpp"].curriculum(1)
    # 128 x (224/B)^2 to the nearest divisor of 1024: 696 -> 512, 251 -> 256
    assert [s.batch for s in resnet.stages] == [512] * 2 + [256] * 4 + [0] * 4
    assert all(s.batch == 0 for s in rows["resnet50_etpp"].curriculum(8).stages)  # 1024 / 8 = 128 already


def test_the_demo_set_is_written_once_per_node_and_found_by_every_process(monkeypatch, tmp_path):
    calls = []

    def demo_dataset(spec):
        calls.append("write or find")
        return tmp_path

    # train.data may import demo_dataset at its top (its own name) or at the call (the module's)
    monkeypatch.setattr("etpp_dali.data.demo.demo_dataset", demo_dataset)
    monkeypatch.setattr(train_data, "demo_dataset", demo_dataset, raising=False)
    monkeypatch.setattr(train_data, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "barrier", lambda: calls.append("barrier"))
    for local_rank, expected in (("0", ["write or find", "barrier", "write or find"]),
                                 ("1", ["barrier", "write or find"])):
        calls.clear()
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert train_data.data_root(TrainConfig(data="demo")) == tmp_path
        assert calls == expected, local_rank
