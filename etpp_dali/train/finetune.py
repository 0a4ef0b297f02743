"""The model of a run by its task, and ``--init-from``: a classify run that starts from the
encoder of a checkpoint of this project (an MAE pre-training's, or a classifier's).

``--init-from RUN/last.pt`` reads the checkpoint's architecture (its ``model`` and ViT
``patch_size``; ``etpp train`` takes them unless ``--model`` is given), builds the classifier of
the recipe with a new head, and loads every encoder weight: the decoder, the mask token and an
old head are dropped, and the position embeddings are resampled when the classifier's patch grid
differs from the checkpoint's. With ``--linear-probe`` every weight but the head is frozen.
A file that is not a checkpoint of this project, or whose weights do not fit the model, is
refused with a one-line :class:`RecipeError`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.layers import resample_abs_pos_embed

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.train.checkpoint import CHECKPOINT_FORMAT
from etpp_dali.train.config import RecipeError, TrainConfig
from etpp_dali.train.distributed import is_rank0
from etpp_dali.train.mae import build_mae
from etpp_dali.train.models import build_model

__all__ = ["HEAD_PREFIX", "build_task_model", "checkpoint_architecture", "encoder_weights", "load_encoder",
           "read_pretrained"]

HEAD_PREFIX = "head."
_ENCODER_PREFIX = "encoder."


def read_pretrained(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be one of this project's (a one-line error if not)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise RecipeError(f"--init-from {path}: no such file; give a run folder or its last.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        raise RecipeError(f"--init-from {path}: not a checkpoint of this project ({str(exc).splitlines()[0]})") \
            from None
    if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT
            and isinstance(ckpt.get("model"), Mapping) and isinstance(ckpt.get("config"), Mapping)):
        raise RecipeError(f"--init-from {path}: not a checkpoint of this project (no format {CHECKPOINT_FORMAT} "
                          "with model weights and a config); give a run's last.pt or stage<k>.pt")
    return ckpt


def checkpoint_architecture(path: str | Path) -> dict[str, Any]:
    """The ``model`` and ``patch_size`` settings of the run that wrote the checkpoint at ``path``."""
    config = read_pretrained(path)["config"]
    patch = config.get("patch_size")
    if config.get("task") == "mae" and not patch:
        patch = TrainConfig(model=config["model"], task="mae").vit_patch()
    return {"model": config["model"], "patch_size": patch}


def encoder_weights(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """The encoder's weights in ``ckpt`` under a classifier's names, and how many tensors were
    dropped (an MAE's decoder, a classifier's head)."""
    weights = ckpt["model"]
    if ckpt["config"].get("task") == "mae":
        kept = {k[len(_ENCODER_PREFIX):]: v for k, v in weights.items() if k.startswith(_ENCODER_PREFIX)}
    else:
        kept = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
    return kept, len(weights) - len(kept)


def _fit_pos_embed(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Resample the checkpoint's position embeddings to ``model``'s patch grid (same prefix tokens)."""
    old, new = weights.get("pos_embed"), getattr(model, "pos_embed", None)
    if old is None or new is None or old.shape == new.shape:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    old_grid = math.isqrt(old.shape[1] - prefix)
    weights["pos_embed"] = resample_abs_pos_embed(old, new_size=list(model.patch_embed.grid_size),
                                                  old_size=[old_grid, old_grid], num_prefix_tokens=prefix)


def load_encoder(model: torch.nn.Module, cfg: TrainConfig) -> str:
    """Load the encoder of ``cfg.init_from`` into ``model`` (a classifier; its head stays new),
    freeze all but the head for ``cfg.linear_probe``; returns what was loaded, in one line."""
    ckpt = read_pretrained(cfg.init_from)
    saved = ckpt["config"]
    weights, dropped = encoder_weights(ckpt)
    _fit_pos_embed(weights, model)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIX)}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    misshapen = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or misshapen:
        example = (misshapen or missing or unexpected)[0]
        raise RecipeError(f"--init-from {cfg.init_from}: a checkpoint of {saved.get('model')} (patch "
                          f"{saved.get('patch_size') or 'of its name'}), whose weights do not fit --model {cfg.model}: "
                          f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshapen)} of another shape "
                          f"(e.g. {example})")
    model.load_state_dict(weights, strict=False)
    if cfg.linear_probe:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(HEAD_PREFIX))
    kind = "MAE pre-training" if saved.get("task") == "mae" else "a classify run"
    what = "the decoder and its mask token" if saved.get("task") == "mae" else "the old head"
    mode = "linear probe: only the head trains" if cfg.linear_probe else "fine-tuning every weight"
    return (f"etpp: --init-from {cfg.init_from}: loaded {len(weights)} encoder tensors of {saved.get('model')} "
            f"({kind}, {len(ckpt.get('history') or [])} epochs); dropped {dropped} tensors ({what}); "
            f"a new head; {mode}")


def build_task_model(cfg: TrainConfig, curriculum: Curriculum, num_classes: int,
                     device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The model of ``cfg``'s task: the MAE (:func:`etpp_dali.train.mae.build_mae`) or the
    classifier (:func:`etpp_dali.train.models.build_model`), the latter started from
    ``cfg.init_from`` when it is set (what was loaded is printed once, on stderr)."""
    if cfg.task == "mae":
        return build_mae(cfg, curriculum, device)
    if not cfg.init_from:
        return build_model(cfg, curriculum, num_classes, device)

    def start_from_checkpoint(model: torch.nn.Module) -> None:
        message = load_encoder(model, cfg)
        if is_rank0():
            print(message, file=sys.stderr, flush=True)

    return build_model(cfg, curriculum, num_classes, device, prepare=start_from_checkpoint)
