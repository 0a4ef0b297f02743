"""The wall-clock budget of ``etpp search --wall-clock-budget``: the predicted seconds of one data
epoch at each band the search may pick, from the rates ``etpp schedule --measure`` takes on this
machine, each band timed at the per-device batch training uses there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

from etpp_dali.curriculum.batching import AUTO, auto_stage_batch, global_batch_size
from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.search.budget import WallClockBudget
from etpp_dali.search.proxy import ProxyData
from etpp_dali.search.space import SearchSpace
from etpp_dali.train.config import TrainConfig
from etpp_dali.train.measure import Rates, measure_rates, overlap_for, seconds_per_epoch
from etpp_dali.util.files import write_text_atomic

__all__ = ["band_batches", "measured_budget", "measured_rates"]


def band_batches(cfg: TrainConfig, space: SearchSpace) -> dict[int, int]:
    """The per-device batch a training run of ``cfg`` uses at each band the search may pick: the
    ``stage_batch: auto`` rule where the recipe sets it (a small band runs a larger batch, and
    so a faster step), else the recipe's batch. On one device, as the search trains."""
    bands = (*space.candidates, space.resolution)
    if cfg.stage_batch != AUTO:
        return {b: cfg.batch_size for b in bands}
    per_device = global_batch_size(cfg.batch_size, cfg.global_batch, 1)
    return {b: auto_stage_batch(cfg.batch_size, b, space.resolution, per_device, cfg.stage_batch_cap) for b in bands}


def measured_budget(cfg: TrainConfig, space: SearchSpace, seconds: float, *, data: ProxyData, root: Path,
                    out: Path, baseline_budget: float, log: Callable[[str], None]) -> WallClockBudget:
    """``seconds`` of wall-clock, each band's data epoch (of the full training set at ``root``)
    predicted from :func:`measured_rates`."""
    batches = band_batches(cfg, space)
    rates = measured_rates(cfg, space, batches, data=data, root=root, out=out, log=log)
    per_epoch = {b: seconds_per_epoch(train_images=data.train_images, step_rate=rates.step[(b, n)],
                                      loader_rate=rates.loader[b], overlap=overlap_for(rates.device))
                 for b, n in batches.items()}
    return WallClockBudget(seconds, per_epoch, baseline_budget=baseline_budget)


def measured_rates(cfg: TrainConfig, space: SearchSpace, batches: Mapping[int, int], *, data: ProxyData,
                   root: Path, out: Path, log: Callable[[str], None]) -> Rates:
    """The per-band rates of ``etpp schedule --measure``, each band at its batch in ``batches``,
    measured once and kept in ``out/measure.json`` so that a resumed search uses the same numbers
    (and finds its runs)."""
    key = {"model": cfg.model, "batch": cfg.batch_size, "device": cfg.device, "amp": cfg.amp,
           "channels_last": cfg.channels_last, "bands": list(space.candidates), "resolution": space.resolution,
           "batches": {str(b): n for b, n in sorted(batches.items())}, "data": data.fingerprint}
    path = out / "measure.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") == key:
            return Rates.from_dict(doc["rates"])
    except (OSError, ValueError, KeyError):
        pass
    log("measuring {} and the loader at bands {} on this machine ...".format(
        cfg.model, ", ".join(f"{b} (batch {n})" for b, n in sorted(batches.items()))))
    top = space.magnitudes()[-1]
    bands = sorted(batches)
    probe = Curriculum([StageSpec(b, top, 1.0 / len(bands), batch=batches[b]) for b in bands], budget=10_000,
                       resolution=space.resolution)
    rates = measure_rates(probe, model=cfg.model, data=root, batch=cfg.batch_size, device=cfg.device,
                          amp=cfg.amp, channels_last=cfg.channels_last, threads=cfg.threads)
    write_text_atomic(path, json.dumps({"key": key, "rates": rates.to_dict()}, indent=2) + "\n")
    return rates
