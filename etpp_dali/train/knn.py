"""The k-NN monitor of self-supervised pre-training: frozen features of the training images (the
memory bank) and of the validation images, each validation image labelled by a vote of its k
nearest training images (cosine similarity), weighted by ``exp(similarity / T)`` (the weighted
k-NN classifier of Wu et al., 2018, that DINO and the MAE literature report; k = 20, T = 0.07).

Both sets are read at full resolution with the validation transform (resize, centre crop), so
the figure does not depend on the band a stage trains at. Under DDP each rank reads its shard;
the memory bank is gathered onto every rank and the hits are summed over the ranks.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F

from etpp_dali.train.distributed import sum_over_ranks
from etpp_dali.train.models import unwrap_model

__all__ = ["KNN_TEMPERATURE", "gather_rows", "knn_evaluate", "knn_hits"]

KNN_TEMPERATURE = 0.07
_QUERY_CHUNK = 1024  # validation images scored at once: bounds the (chunk x bank) similarity matrix


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` from every rank, rank by rank (shards may differ in length); the
    tensor itself without a process group."""
    if not torch.distributed.is_initialized():
        return tensor
    world = torch.distributed.get_world_size()
    size = torch.tensor([len(tensor)], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    torch.distributed.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:int(s.item())] for part, s in zip(parts, sizes)])


def _features(model: torch.nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
              autocast: Callable[[], ContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features and labels of every batch of ``loader`` (this rank's shard)."""
    feats, labels = [], []
    for images, target in loader:
        with autocast():
            feats.append(F.normalize(model.features(images).float(), dim=1))
        labels.append(target)
    return torch.cat(feats), torch.cat(labels)


def knn_hits(queries: torch.Tensor, query_labels: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, *,
             k: int, num_classes: int, temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """How many of ``queries`` (normalised rows) the weighted vote of their ``k`` nearest ``bank``
    rows labels right, as a float64 scalar on their device."""
    hits = torch.zeros((), dtype=torch.float64, device=queries.device)
    k = min(k, len(bank))
    for start in range(0, len(queries), _QUERY_CHUNK):
        sims, nearest = (queries[start:start + _QUERY_CHUNK] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sims), num_classes, device=queries.device)
        votes.scatter_add_(1, bank_labels[nearest], (sims / temperature).exp())
        hits += votes.argmax(dim=1).eq(query_labels[start:start + _QUERY_CHUNK]).sum().double()
    return hits


@torch.no_grad()
def knn_evaluate(model: torch.nn.Module, memory_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], ContextManager],
                 device: torch.device, k: int = 20) -> dict[str, float]:
    """The k-NN top-1 (percent) of ``model``'s :meth:`features` on ``val_loader`` against the
    memory bank of ``memory_loader``, and the validation images counted."""
    base = unwrap_model(model)
    was_training = base.training
    base.eval()
    try:
        bank, bank_labels = (gather_rows(t) for t in _features(base, memory_loader, autocast))
        queries, labels = _features(base, val_loader, autocast)
    finally:
        base.train(was_training)
    num_classes = int(bank_labels.max().item()) + 1 if len(bank_labels) else 1
    num_classes = max(num_classes, int(labels.max().item()) + 1 if len(labels) else 1)
    hits = knn_hits(queries, labels, bank, bank_labels, k=k, num_classes=num_classes)
    hits, n = sum_over_ranks(torch.stack([hits, hits.new_tensor(float(len(labels)))]), device).tolist()
    return {"knn_top1": 100.0 * hits / max(n, 1.0), "val_images": int(n)}
