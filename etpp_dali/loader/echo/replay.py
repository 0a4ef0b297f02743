"""Replay (EfficientTrain++): more training batches than the decoder produces at small bands.

At a small band a step is cheap and decoding becomes the bottleneck. In a stage with replay
factor r the pipeline decodes ``batch_size // r`` fresh images per step; the rest of each batch
is drawn uniformly, with replacement, from a FIFO buffer of recently produced samples (already
augmented, kept in float16 on the output device). The schedule divides the stage's data epochs
by r, so its steps and compute stay the same while the loader decodes r times fewer images. The
buffer starts empty at each stage (and after a resume).
"""

from __future__ import annotations

import torch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """FIFO of recent (sample, label) pairs; draws uniformly with replacement."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.size = 0
        self.head = 0

    def push(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.images is None or self.images.shape[1:] != images.shape[1:]:
            self.images = torch.empty((self.capacity, *images.shape[1:]), dtype=torch.float16, device=images.device)
            self.labels = torch.empty(self.capacity, dtype=labels.dtype, device=labels.device)
            self.size = self.head = 0
        n = min(len(images), self.capacity)
        idx = (self.head + torch.arange(n)) % self.capacity
        self.images[idx.to(images.device)] = images[-n:].to(torch.float16)
        self.labels[idx.to(labels.device)] = labels[-n:]
        self.head = (self.head + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.size, (count,), generator=generator)
        return self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)]

    def complete(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the fresh samples, then fill the batch up to ``batch_size`` with draws."""
        self.push(images, labels)
        extra = batch_size - len(labels)
        if extra <= 0:
            return images, labels
        drawn_images, drawn_labels = self.draw(extra, generator)
        return torch.cat([images, drawn_images.to(images.dtype)]), torch.cat([labels, drawn_labels])
