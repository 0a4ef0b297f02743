"""The window module of the torch ``DataLoader`` peers (the EfficientTrain++ reference loader and
timm's): ``python -m etpp_dali.bench.torch_window SPEC RESULT`` times one of them
(:mod:`etpp_dali.bench.window`), set up as its own users run it. Imports torch and timm, not DALI.
"""

from __future__ import annotations

import gc
from typing import Any, Iterator

import torch
from timm.data import create_loader

from etpp_dali.bench.loaders import Running, WindowSpec
from etpp_dali.bench.reference import ReferenceDataset, install_posterize_guard, reference_loader
from etpp_dali.bench.window import cuda_sync, exit_window, main
from etpp_dali.data.sources import Source

__all__ = ["build_loader"]


def build_loader(spec: WindowSpec, source: Source) -> Running:
    """Build the loader ``spec.loader`` names over ``source`` (in this process)."""
    if spec.loader == "reference":
        return _reference(spec, source)
    if spec.loader == "timm":
        return _timm(spec, source)
    raise ValueError(f"loader {spec.loader!r} is not a torch DataLoader peer")


def _reference(spec: WindowSpec, source: Source) -> Running:
    samples = [(r.path, r.label) for r in source.records]
    loader = reference_loader(samples, resolution=spec.resolution, band=spec.band, magnitude=spec.magnitude,
                              batch_size=spec.batch, workers=spec.threads, seed=spec.seed,
                              pin_memory=spec.device == "cuda")
    return _data_loader(spec, loader, loader)


def _timm(spec: WindowSpec, source: Source) -> Running:
    """timm's own loader at the band, as timm's train.py builds it (on a GPU with its prefetcher:
    uint8 batches normalised on the device)."""
    install_posterize_guard()  # forked workers inherit it; spawned ones get it from the dataset
    torch.manual_seed(spec.seed)
    cuda = spec.device == "cuda"
    dataset = ReferenceDataset([(r.path, r.label) for r in source.records], transform=None)
    loader = create_loader(dataset, input_size=(3, spec.band, spec.band), batch_size=spec.batch, is_training=True,
                           auto_augment=f"rand-m{int(spec.magnitude)}-mstd0.5-inc1", interpolation="bicubic",
                           re_prob=0.0, num_workers=spec.threads, persistent_workers=True, use_prefetcher=cuda,
                           pin_memory=cuda, device=torch.device("cuda" if cuda else "cpu"))
    return _data_loader(spec, loader, getattr(loader, "loader", loader))


def _data_loader(spec: WindowSpec, loader: Any, torch_loader: Any) -> Running:
    """Endless batches of a torch ``DataLoader`` (or a wrapper of one); ``close`` stops its
    worker processes."""
    device = torch.device(spec.device)

    def batches() -> Iterator[int]:
        while True:
            for x, _ in loader:
                if x.device.type != device.type:
                    x = x.to(device, non_blocking=True)
                yield len(x)

    it = batches()

    def close() -> None:
        it.close()
        iterator = getattr(torch_loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # persistent workers: stop them now, not at exit
        torch_loader._iterator = None
        gc.collect()

    prefetch = spec.threads * (torch_loader.prefetch_factor or 2) if spec.threads else 0
    return Running(next_batch=lambda: next(it), prefetch=prefetch, close=close, decoder="PIL",
                   output_device=spec.device, sync=cuda_sync(spec))


if __name__ == "__main__":
    exit_window(main(build_loader))
