"""MAE pre-training with the curriculum: the schedule on the patch grid, the model and its loss,
the k-NN monitor, --init-from (fine-tune and linear probe), resume after kill -9, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from etpp_dali.cli import main
from etpp_dali.curriculum.patches import mae_curriculum, patch_curriculum, round_band, token_table
from etpp_dali.curriculum.schedule import Curriculum, ScheduleError
from etpp_dali.train.config import RecipeError, TrainConfig, load_recipe, merge_recipe
from etpp_dali.train.knn import knn_hits
from etpp_dali.train.mae import MaskedAutoencoder, build_mae, vit_encoder
from etpp_dali.train.models import create_model
from etpp_dali.train.trainer import Trainer, train

pytest.importorskip("nvidia.dali")
ROOT = Path(__file__).resolve().parents[1]
MAE_SETTINGS = dict(task="mae", model="test_vit", patch_size=8, preset="etpp", family="deit", budget=3, resolution=32,
                    batch_size=16, lr=1e-3, warmup_epochs=0.2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                    val_every=2, knn_k=5, progress=False, threads=2, seed=3)


def mae_cfg(demo_root, out, **over):
    return TrainConfig(**{**MAE_SETTINGS, "data": str(demo_root), "output": str(out), **over})


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_mae(grid=4, **over):
    encoder = vit_encoder("test_vit", resolution=8 * grid, patch=8, drop_path=0.0)
    return MaskedAutoencoder(encoder, grid=grid, decoder_dim=32, decoder_depth=1, decoder_heads=2, **over)


# ------------------------------------------------------------------------------ the schedule
def test_mae_schedule_rounds_preset_bands_to_the_patch_and_turns_randaugment_off():
    cur = Curriculum.preset("etpp", family="deit", budget=20, resolution=64)
    assert [s.band for s in cur.stages][::2] == [28, 46, 46, 54, 64]  # even, not on an 8-px grid
    mae = mae_curriculum(cur, 8)
    assert [s.band for s in mae.stages][::2] == [32, 48, 48, 56, 64]
    assert all(s.magnitude == 0 for s in mae.stages) and mae.name == "mae-etpp-deit"
    assert round_band(28, 8, 64) == 32 and round_band(27, 8, 64) == 24 and round_band(3, 8, 64) == 8
    rows = token_table(mae, 8)
    assert [(r["tokens"], r["visible"]) for r in rows[::2]] == [(16, 4), (36, 9), (36, 9), (49, 12), (64, 16)]
    assert rows[0]["step_cost"] == 0.25 and rows[-1]["step_cost"] == 1.0
    kept = patch_curriculum(cur, 8)  # a classify ViT: bands on the grid, RandAugment's ramp kept
    assert [s.magnitude for s in kept.stages] == [s.magnitude for s in cur.stages]
    # the paper's ViT-B/16 bands are multiples of 16 already
    assert [s.band for s in mae_curriculum(Curriculum.preset("etpp", family="deit", budget=400), 16).stages][::2] == \
        [96, 160, 160, 192, 224]


def test_a_schedule_file_whose_band_the_patch_does_not_divide_is_refused(tmp_path):
    path = tmp_path / "bands.yaml"
    stages = [{"band": band, "magnitude": 0} for band in (40, 44, 64)]
    path.write_text(yaml.safe_dump({"budget": 4, "resolution": 64, "stages": stages}))
    with pytest.raises(RecipeError, match=r"stage 1's band 44 is not a multiple of the patch size 8; .*e\.g\. 48"):
        TrainConfig(task="mae", model="test_vit", patch_size=8, preset=str(path), resolution=64).curriculum()
    with pytest.raises(ScheduleError, match="resolution 64 is not a multiple of the patch size 12"):
        mae_curriculum(Curriculum.from_file(path), 12)
    assert [s.band for s in mae_curriculum(Curriculum.from_file(path), 4).stages] == [40, 44, 64]


def test_the_schedule_command_shows_tokens_and_relative_compute():
    res = CliRunner().invoke(main, ["schedule", "--family", "deit", "--mae-patch", "16", "--budget", "400",
                                    "--baseline-budget", "1600"])
    assert res.exit_code == 0, res.output
    assert "tokens visible" in res.output and "relative compute 0.250" in res.output
    lines = [line.split() for line in res.output.splitlines() if line.strip().startswith(("0 ", "9 "))]
    assert lines[0][1] == "96" and lines[0][-3:] == ["36", "9", "0.184"]
    assert lines[1][1] == "224" and lines[1][-3:] == ["196", "49", "1.000"]
    res = CliRunner().invoke(main, ["schedule", "--mae-patch", "16", "--resolution", "200"])
    assert res.exit_code != 0 and "not a multiple of the patch size 16" in res.output


def test_the_mae_recipes():
    rows = {name: TrainConfig(**load_recipe(ROOT / "pipelines" / f"{name}.yaml"))
            for name in ("mae_demo", "mae_vit_base_etpp", "mae_vit_base_baseline")}
    etpp, base = rows["mae_vit_base_etpp"], rows["mae_vit_base_baseline"]
    assert etpp.model == base.model == "vit_base_patch16_224" and etpp.vit_patch() == 16
    assert etpp.mae_target == base.mae_target == "hog" and etpp.mask_ratio == base.mask_ratio == 0.75
    assert etpp.curriculum().total_compute == pytest.approx(400, abs=0.5) and base.curriculum().total_compute == 400
    assert etpp.curriculum().relative_compute() == pytest.approx(0.25, abs=0.001)  # against MAE's 1,600 epochs
    assert etpp.learning_rate(4096) == base.learning_rate(4096) == pytest.approx(1.5e-4 * 16)
    demo = rows["mae_demo"].curriculum()
    assert demo.resolution == 64 and all(s.band % 8 == 0 and s.magnitude == 0 for s in demo.stages)
    assert all(r.reprob == 0 and r.mixup == 0 for r in rows.values())


def test_bench_mae_bad_flags_are_one_line_errors(tmp_path):
    cases = [(["--recipe", "demo"], "--recipe demo: not an MAE recipe (task: classify)"),
             (["--seeds", "a,b"], "--seeds 'a,b': give comma-separated integers"),
             (["--ratio", "0"], "--ratio 0.0: must be > 0")]
    for args, needle in cases:
        res = CliRunner().invoke(main, ["bench", "mae", "--output", str(tmp_path / "o"), *args])
        assert res.exit_code == 1 and needle in res.output and res.output.strip().count("\n") == 0, res.output
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------- the model
def test_the_loss_is_the_mean_squared_error_over_the_masked_patches_only():
    torch.manual_seed(0)
    model = tiny_mae()
    images = torch.randn(3, 3, 32, 32)
    torch.manual_seed(1)
    loss = model(images)
    torch.manual_seed(1)
    encoded, keep, grid = model.encode_visible(images)
    assert grid == (4, 4) and keep.shape == (3, 4) and encoded.shape == (3, 5, model.encoder.embed_dim)
    pred = model.decoder(encoded, keep, grid)
    target = model.patch_targets(images)
    masked = torch.ones(3, 16, dtype=torch.bool)
    masked[torch.arange(3)[:, None], keep] = False
    expected = (pred - target).pow(2).mean(-1)[masked].mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(target.mean(-1), torch.zeros(3, 16), atol=1e-5)  # norm_pix_loss: each patch normalised
    loss.backward()
    for name in ("encoder.blocks.0.attn.qkv.weight", "encoder.pos_embed", "decoder.mask_token", "decoder.pos_embed"):
        assert model.get_parameter(name).grad is not None and model.get_parameter(name).grad.abs().sum() > 0, name


def test_position_embeddings_follow_the_band_and_hog_targets_fit_the_head():
    model = tiny_mae(grid=8, target="hog")
    assert model.decoder.head.out_features == 3 * 9  # one 8-px cell a patch, 3 channels, 9 orientations
    for band in (16, 24, 40, 64):
        assert torch.isfinite(model(torch.randn(2, 3, band, band)))
        assert model.features(torch.randn(2, 3, band, band)).shape == (2, 64)
    cfg = TrainConfig(task="mae", model="test_vit", patch_size=4, mae_target="hog", resolution=32, budget=2)
    with pytest.raises(RecipeError, match="multiple of the 8-px HOG cell"):
        build_mae(cfg, cfg.curriculum(), torch.device("cpu"))


def test_knn_votes_by_weighted_neighbours():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0], [0.2, 1.0]]), dim=1)
    hits = knn_hits(queries, torch.tensor([0, 1, 0]), bank, labels, k=2, num_classes=2)
    assert hits.item() == 2.0 and hits.dtype == torch.float64


# -------------------------------------------------------------------------------- bad inputs
def test_a_cnn_given_to_mae_is_a_one_line_error(demo_root, tmp_path):
    with pytest.raises(RecipeError, match="not one"):
        TrainConfig(task="mae", model="test_resnet").curriculum()
    with pytest.raises(RecipeError, match="task mae pre-trains a ViT, and --model test_resnet is not one"):
        vit_encoder("test_resnet", resolution=32, patch=8, drop_path=0.0)
    res = CliRunner().invoke(main, ["train", "--recipe", "mae_demo", "--model", "resnet10t", "--data", str(demo_root),
                                    "--output", str(tmp_path / "cnn")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0 and "pre-trains a ViT" in res.output
    with pytest.raises(RecipeError, match="--model test_resnet does not take patch_size = 8, img_size = 32"):
        create_model("test_resnet", 4, 0.0, patch_size=8, img_size=32)
    with pytest.raises(RecipeError, match="mixup and cutmix do not apply"):
        TrainConfig(task="mae", model="test_vit", mixup=0.8).validate()
    with pytest.raises(RecipeError, match="--linear-probe trains a head on a pre-trained encoder"):
        TrainConfig(linear_probe=True).validate()


# ------------------------------------------------------------ pre-train, monitor, fine-tune
@pytest.fixture(scope="module")
def pretrained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "run"
    summary = train(mae_cfg(demo_root, out))
    return out, summary


def test_mae_pretrains_and_monitors_knn(pretrained):
    out, summary = pretrained
    rows = rows_of(out)
    total = TrainConfig(**MAE_SETTINGS).curriculum().total_epochs
    assert [r["epoch"] for r in rows] == list(range(total))
    assert all(r["magnitude"] == 0 and r["band"] % 8 == 0 for r in rows)
    monitored = [r for r in rows if "knn_top1" in r]
    assert [r["epoch"] for r in monitored] == [e for e in range(total) if (e + 1) % 2 == 0 or e == total - 1]
    assert all(0 <= r["knn_top1"] <= 100 and r["val_images"] == 24 for r in monitored)
    assert "top1" not in rows[-1] and summary["knn_top1"] == rows[-1]["knn_top1"]
    assert all(r["loss"] > 0 for r in rows)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["task"] == "mae" and any(k.startswith("decoder.") for k in ckpt["model"])


def finetune_args(demo_root, init, out, *extra):
    return ["train", "--init-from", str(init), "--data", str(demo_root), "--resolution", "32", "--budget", "1",
            "--batch-size", "16", "--lr", "1e-3", "--warmup-epochs", "0.2", "--threads", "2", "--no-progress",
            "--output", str(out), *extra]


def test_init_from_fine_tunes_the_encoder_of_the_checkpoint_architecture(pretrained, demo_root, tmp_path):
    init, _ = pretrained
    res = CliRunner().invoke(main, finetune_args(demo_root, init / "last.pt", tmp_path / "ft"))
    assert res.exit_code == 0, res.output
    assert "loaded 78 encoder tensors of test_vit (MAE pre-training, " in res.output
    assert "dropped 20 tensors (the decoder and its mask token); a new head; fine-tuning every weight" in res.output
    assert "top-1" in res.output
    ckpt = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert ckpt["config"]["model"] == "test_vit" and ckpt["config"]["patch_size"] == 8
    mae = torch.load(init / "last.pt", weights_only=True)["model"]
    assert not torch.equal(ckpt["model"]["blocks.0.attn.qkv.weight"], mae["encoder.blocks.0.attn.qkv.weight"])


def test_linear_probe_trains_the_head_only(pretrained, demo_root, tmp_path):
    init, _ = pretrained
    res = CliRunner().invoke(main, finetune_args(demo_root, init, tmp_path / "probe", "--linear-probe"))
    assert res.exit_code == 0, res.output
    assert "linear probe: only the head trains" in res.output
    probe = torch.load(tmp_path / "probe" / "last.pt", weights_only=True)["model"]
    mae = torch.load(init / "last.pt", weights_only=True)["model"]
    frozen = [k for k in probe if not k.startswith("head.")]
    assert len(frozen) == 78 and all(torch.equal(probe[k], mae["encoder." + k]) for k in frozen)
    assert probe["head.weight"].shape == (4, 64)


def test_init_from_refuses_foreign_files_and_other_architectures(pretrained, demo_root, tmp_path):
    init, _ = pretrained
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    for path, message in ((text, "not a checkpoint of this project"), (foreign, "not a checkpoint of this project"),
                          (tmp_path / "absent.pt", "no such file")):
        res = CliRunner().invoke(main, finetune_args(demo_root, path, tmp_path / "x"))
        assert res.exit_code == 1 and message in res.output and res.output.strip().count("\n") == 0, res.output
    res = CliRunner().invoke(main, finetune_args(demo_root, init / "last.pt", tmp_path / "y", "--model", "test_resnet"))
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0, res.output
    assert "a checkpoint of test_vit (patch 8), whose weights do not fit --model test_resnet" in res.output
    res = CliRunner().invoke(main, finetune_args(demo_root, init / "last.pt", tmp_path / "z", "--model", "test_vit2"))
    assert res.exit_code == 1 and "whose weights do not fit --model test_vit2" in res.output


def test_init_from_resamples_position_embeddings_to_another_resolution(pretrained, demo_root, tmp_path):
    init, _ = pretrained
    cfg = TrainConfig(data=str(demo_root), model="test_vit", patch_size=8, init_from=str(init / "last.pt"),
                      resolution=48, budget=1, batch_size=16, progress=False, threads=2, output=str(tmp_path / "r48"))
    trainer = Trainer(cfg)
    try:
        assert trainer.model.pos_embed.shape == (1, 1 + 36, 64)  # the 4x4 grid of R = 32 resampled to 6x6
    finally:
        trainer.close()


# ------------------------------------------------------------------------- kill -9, resume
@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_gives_the_same_batches_and_losses(demo_root, tmp_path):
    recipe = tmp_path / "mae_tiny.yaml"
    settings = {k: v for k, v in MAE_SETTINGS.items() if k not in ("preset", "family", "budget", "resolution")}
    settings.update(data=str(demo_root), schedule={"preset": "etpp", "family": "deit", "budget": 4, "resolution": 32})
    recipe.write_text(yaml.safe_dump(settings))
    reference = tmp_path / "reference"
    train(merge_recipe(recipe, {"output": str(reference)}))
    out = tmp_path / "killed"
    args = ["train", "--recipe", str(recipe), "--output", str(out), "--no-progress"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "etpp_dali", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    t0 = time.time()
    while not ((out / "metrics.jsonl").exists() and len(rows_of(out)) >= 2):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 240, "training did not get going"
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next epoch
    proc.kill()
    proc.wait()
    done = len(rows_of(out))
    resumed = subprocess.run([sys.executable, "-m", "etpp_dali", *args, "--resume"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got, want = rows_of(out), rows_of(reference)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want] and len(got) > done
    for a, b in zip(got, want):  # same batches, same masks: the same losses and k-NN figures
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-9), (a["epoch"], a["loss"], b["loss"])
        assert a.get("knn_top1") == b.get("knn_top1")


@pytest.mark.slow
def test_mae_under_ddp_two_cpu_processes(demo_root, tmp_path):
    recipe = tmp_path / "mae_ddp.yaml"
    settings = {k: v for k, v in MAE_SETTINGS.items() if k not in ("preset", "family", "budget", "resolution")}
    settings.update(data=str(demo_root), threads=1, schedule={"preset": "etpp", "family": "deit", "budget": 2,
                                                              "resolution": 32})
    recipe.write_text(yaml.safe_dump(settings))
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "etpp_dali", "train", "--recipe", str(recipe), "--output", str(out),
                           "--no-progress", "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = rows_of(out)
    assert all(r["images"] == 96 for r in rows)  # 2 ranks x 48 images each epoch
    assert rows[-1]["val_images"] == 24 and "knn_top1" in rows[-1]  # every val image once across both ranks
    assert proc.stdout.count("k-NN top-1") == 1
