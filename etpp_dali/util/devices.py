"""The torch device a loader or a run takes: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked
against what this machine sees. Lives below the loader and the trainer, which both resolve it."""

from __future__ import annotations

import re

import torch


def resolve_device(device: str, device_id: int | None = None) -> str:
    """The torch device a loader runs on. ``"auto"``: the GPU when CUDA sees one, else the CPU.
    ``device_id`` picks the GPU (``device="cuda", device_id=1`` is ``"cuda:1"``, as is
    ``device="cuda:1"``); on the CPU it has no meaning and is an error, except under ``"auto"``
    on a machine without a GPU."""
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"device = {device!r} is unknown; use auto, cpu, cuda or cuda:N")
    index = int(device[len("cuda:"):]) if device.startswith("cuda:") else None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            return device
    if device == "cpu":
        if device_id is not None:
            raise ValueError(f"device_id = {device_id} selects a GPU, but device = 'cpu'; leave device_id out")
        return device
    if not torch.cuda.is_available():
        raise RuntimeError(f"device = {device!r} but no CUDA GPU is visible on this machine; use device='cpu'")
    if device_id is not None and index is not None and index != device_id:
        raise ValueError(f"device = {device!r} and device_id = {device_id} name different GPUs; give one of them")
    index = device_id if device_id is not None else index
    if index is None:
        return device
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(f"CUDA device {index} is not visible ({count} visible); use 0..{count - 1}")
    return f"cuda:{index}"
