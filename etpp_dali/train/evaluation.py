"""Evaluation of a run: top-1, top-5 and loss on the validation set at full resolution, summed
over the ranks. The counts add up on the device and are read once, at the end."""

from __future__ import annotations

from typing import Callable, ContextManager, Iterable

import torch

from etpp_dali.train.distributed import sum_over_ranks
from etpp_dali.train.models import model_at_band

__all__ = ["eval_counts", "evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]], resolution: int,
             autocast: Callable[[], ContextManager], device: torch.device) -> dict[str, float]:
    """``model`` on every batch of ``val_loader`` (this rank's shard) at ``resolution``. A model set
    for another band is evaluated as an adapted copy, so training goes on from exactly the weights
    it left."""
    model = model_at_band(model, resolution)
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, loss sum
    images = 0
    for batch, labels in val_loader:
        with autocast():
            logits = model(batch).float()
        counts += eval_counts(logits, labels)
        images += len(labels)
    model.train(was_training)
    top1, top5, loss, n = sum_over_ranks(torch.cat([counts, counts.new_tensor([images])]), device).tolist()
    per = max(n, 1.0)
    return {"top1": 100.0 * top1 / per, "top5": 100.0 * top5 / per, "val_loss": loss / per, "val_images": int(n)}


def eval_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 hits, top-5 hits (with fewer than 5 classes, the top of all) and the summed loss of
    a batch, as one float64 tensor on its device."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target[:, None])
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    return torch.stack([hits[:, 0].sum().double(), hits.any(dim=1).sum().double(), loss.double()])
