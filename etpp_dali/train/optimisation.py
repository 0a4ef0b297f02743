"""The optimisation side of a run: AdamW, the loss, AMP, EMA, the learning-rate schedule and one
training step.

The learning rate warms up linearly, then follows a cosine to ``min_lr``, both over the fraction
of *compute* done (as EfficientTrain++ prescribes), not of data epochs: a 96-px epoch costs about
a fifth of a 224-px one, so counting epochs would spend most of the decay on the cheap early
stages. The warm-up is ``warmup_epochs`` full-resolution epochs of compute (20 in the reference
recipes) or ``warmup_fraction`` of the budget (DeiT: 0.2).
"""

from __future__ import annotations

import contextlib
import gc
import math
from typing import Any, Mapping

import timm.optim
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.mae import ModelLoss
from etpp_dali.train.models import ResizedTable, adapt_model_to_band, unwrap_model, wrap_for_ranks

__all__ = ["Optimisation"]


class Optimisation:
    """AdamW (timm's, linear LR scaling), cross-entropy with label smoothing or mixup/cutmix soft
    targets, an fp16 gradient scaler, an EMA of the weights, gradient clipping, and the LR schedule.

    ``model`` is what a step runs (the DDP wrapper under DDP); :meth:`set_band` may replace the
    wrapper, never the module inside it, so read it from here rather than keep a copy."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, curriculum: Curriculum, num_classes: int,
                 device: torch.device, global_batch: int | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.device = device
        # the images an optimiser step sees over all devices, whatever a stage's micro-batch
        self.lr = cfg.learning_rate(global_batch or cfg.global_batch_size(1))
        # fused on a GPU: one kernel for all parameters, and the fp16 scaler's inf check stays on the device
        self.optimizer = timm.optim.create_optimizer_v2(unwrap_model(model), "adamw", lr=self.lr,
                                                        weight_decay=cfg.weight_decay,
                                                        fused=True if device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.ema = ModelEmaV3(unwrap_model(model), decay=cfg.ema_decay) if cfg.ema else None
        self.mixup, self.criterion = _loss(cfg, num_classes)
        wf = cfg.warmup_fraction
        self.warmup = wf if wf is not None else curriculum.warmup_fraction(cfg.warmup_epochs)

    def lr_at(self, fraction: float) -> float:
        """Linear warm-up then cosine to ``min_lr``, over the fraction of compute done."""
        if self.warmup > 0 and fraction < self.warmup:
            return self.lr * fraction / self.warmup
        progress = (fraction - self.warmup) / max(1e-12, 1.0 - self.warmup)
        return self.cfg.min_lr + 0.5 * (self.lr - self.cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def set_lr(self, fraction: float) -> float:
        """Set every parameter group's LR for ``fraction`` of compute done; returns the base LR."""
        lr = self.lr_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def autocast(self) -> torch.autocast:
        """The AMP context of ``--amp`` (bf16, fp16, or off)."""
        if self.cfg.amp == "off":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def set_band(self, band: int) -> None:
        """Set the model for ``band``. Where that resizes parameters (a Swin's relative-position
        tables, resized in place), their optimiser state is resized the same way, the EMA copy
        follows, and a DDP wrapper is rebuilt around the same module (its buckets have the old shapes)."""
        resized = adapt_model_to_band(self.model, band)
        if not resized:
            return
        _resize_optimizer_state(self.optimizer, resized)
        if self.ema is not None:
            adapt_model_to_band(self.ema.module, band)
        if self.model is not unwrap_model(self.model):
            # The old wrapper must be gone before the new one is built: its reducer holds each
            # table's gradient accumulator, which checks gradients against the old shape.
            self.model = unwrap_model(self.model)
            gc.collect()  # in case the wrapper sits in a reference cycle
            self.model = wrap_for_ranks(self.model, self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor, *, micro_batches: int = 1,
             last: bool = True) -> torch.Tensor:
        """One micro-batch of an optimiser step that averages ``micro_batches`` equal micro-batches:
        its backward with the loss scaled by ``1 / micro_batches`` (the gradients add up to the
        mean over the group's images), then, on the ``last`` of the group, the optimiser step.
        Returns the micro-batch's mean loss, unscaled and still on the device (reading it would
        make the host wait for the step to finish)."""
        loss = self.backward(images, labels, scale=1.0 / micro_batches, sync=last)
        if last:
            self.optimizer_step()
        return loss

    def backward(self, images: torch.Tensor, labels: torch.Tensor, *, scale: float = 1.0,
                 sync: bool = True) -> torch.Tensor:
        """Forward and backward of a batch (mixup, AMP, loss scaling), the loss times ``scale``;
        gradients add up in the parameters until :meth:`optimizer_step`. Under DDP, ``sync=False``
        skips the gradients' all-reduce (a micro-batch that is not the last of its group: the
        last one reduces the sum). Returns the detached, unscaled loss."""
        targets = labels
        if self.mixup is not None:
            if len(images) % 2:  # timm's batch mixup needs an even batch
                images, labels = images[:-1], labels[:-1]
            images, targets = self.mixup(images, labels)
        no_sync = getattr(self.model, "no_sync", None)
        with no_sync() if no_sync is not None and not sync else contextlib.nullcontext():
            with self.autocast():
                loss = self.criterion(self.model(images), targets)
            scaled = loss * scale if scale != 1.0 else loss
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        """Clip, step the optimiser on the gradients gathered, clear them, update the EMA."""
        if self.scaler is not None:
            if self.cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self._clip_gradients()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model))

    def _clip_gradients(self) -> None:
        if self.cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)

    def state_dict(self) -> dict[str, Any]:
        """The optimiser, scaler and EMA states, under the keys a checkpoint stores them."""
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.module.state_dict() if self.ema else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state["ema"]:
            self.ema.module.load_state_dict(state["ema"])


def _resize_optimizer_state(optimizer: torch.optim.Optimizer, resized: list[ResizedTable]) -> None:
    """Resize the per-parameter state (Adam's moments) of each resized table as the table was
    resized; a state that held no negative value (a second moment) is kept >= 0."""
    for table in resized:
        state = optimizer.state.get(table.param, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() and value.shape != table.param.shape:
                new = table.resize(value)
                state[key] = new.clamp_(min=0) if bool((value >= 0).all()) else new


def _loss(cfg: TrainConfig, num_classes: int) -> tuple[Any, torch.nn.Module]:
    """timm's batch mixup/cutmix with soft-target cross-entropy, or plain cross-entropy; an MAE's
    forward returns its own loss."""
    if cfg.task == "mae":
        return None, ModelLoss()
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
