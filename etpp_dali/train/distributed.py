"""Processes and devices of a run: the relaunch under torchrun (``etpp train --nproc N``), the
process group torchrun describes, the rank that writes files, the device and the thread count of
each process, and the few collectives the trainer needs (every rank must stop at the same step
and see the same demo set)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Sequence

import torch

from etpp_dali.train.config import RecipeError
from etpp_dali.util.devices import resolve_device
from etpp_dali.util.threads import usable_cores

__all__ = ["agree_any", "broadcast_from_rank0", "cuda_index_for_rank", "init_from_env", "is_distributed", "is_rank0",
           "needs_launch", "run_under_torchrun", "sum_over_ranks", "threads_per_process", "torchrun_command",
           "train_device", "world_size"]


def needs_launch(nproc: int | None) -> bool:
    """Whether ``--nproc`` asks for processes that no launcher has started (torchrun sets
    WORLD_SIZE in the environment of each process it starts)."""
    return nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ


def torchrun_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The command that runs ``etpp train`` with ``train_args`` in ``nproc`` processes on this
    machine: ``python -m torch.distributed.run --standalone`` over ``python -m etpp_dali``.
    ``train_args`` must not hold ``--nproc`` (each child would launch again)."""
    if nproc < 1:
        raise RecipeError(f"--nproc {nproc} must be >= 1")
    if any(arg == "--nproc" or arg.startswith("--nproc=") for arg in train_args):
        raise RecipeError("the arguments of the processes torchrun starts must not hold --nproc")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "etpp_dali", "train", *train_args]


def run_under_torchrun(nproc: int, train_args: Sequence[str]) -> int:
    """Run :func:`torchrun_command` and wait for it; returns its exit status."""
    return subprocess.call(torchrun_command(nproc, train_args))


def init_from_env() -> None:
    """Join the process group that torchrun describes in the environment (if any)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank0() -> bool:
    """Whether this process writes the run's files and prints its reports."""
    return not is_distributed() or torch.distributed.get_rank() == 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def train_device(name: str, amp: str) -> torch.device:
    """The device of this process for ``--device name`` (each rank its own GPU under DDP)."""
    try:
        device = torch.device(resolve_device(name))
    except (ValueError, RuntimeError) as exc:
        raise RecipeError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", cuda_index_for_rank(local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    if amp == "fp16" and device.type != "cuda":
        raise RecipeError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off on the CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed within a stage: tune once a stage
    return device


def cuda_index_for_rank(local_rank: int, visible: int) -> int:
    """The visible GPU of the process of ``local_rank``: itself when every GPU is visible, 0 when
    the launcher shows each process its own GPU (CUDA_VISIBLE_DEVICES per process)."""
    if visible < 1:
        raise RecipeError("--device cuda: no CUDA GPU is visible to this process; check CUDA_VISIBLE_DEVICES")
    return local_rank % visible


def threads_per_process(threads: int | None, device: torch.device) -> int:
    """``--threads``, else the usable cores shared among the ranks of this machine; on the CPU
    torch's own thread count is set to it too."""
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    threads = threads or max(1, usable_cores() // local_ranks)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return threads


def agree_any(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a stop must happen at the same step)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed over the ranks, back on the device it came from."""
    if not is_distributed():
        return values
    summed = values.to(device)
    torch.distributed.all_reduce(summed)
    return summed.to(values.device)


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not is_distributed():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]
