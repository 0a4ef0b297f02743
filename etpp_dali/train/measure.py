"""Know the speed-up before training: time the model and the loader at each band on this
device, then predict each stage's wall-clock against the full-resolution baseline.

Two halves, kept apart so the prediction can be tested without timing anything:

- Timing (:func:`measure_step_rate`, :func:`measure_loader_rate`, :func:`measure_rates`): a
  training step (forward, backward, optimiser step) of the model on random inputs at
  ``band x band`` and the stage's batch; and the :class:`~etpp_dali.loader.loaders.CurriculumLoader` on
  the data at that band. A few steps after a warm-up, in images per second: for the model the
  median of the per-step rates, for the loader the images over the time of a window of batches
  (prefetching makes single batches bursty).
- Prediction (:func:`seconds_per_epoch`, :func:`predict_schedule_time`), pure arithmetic.

The model of a stage's time. A stage trains on ``T = epochs x N x replay`` images (``N``
training images). The model alone needs ``T / model_rate`` seconds. With an echo factor ``e``
(each decoded image used ``e`` times; by default the stage's replay factor) the loader decodes
``T / e`` fresh images and alone needs ``T / (e x loader_rate)`` seconds. How the two combine
depends on where they run:

- on a GPU the loader's CPU threads (or the decoder) work while the GPU trains, so the stage
  takes the longer of the two (``overlap="max"``);
- on a CPU both share the same cores and each was measured with all of them, so neither hides
  the other: the stage takes their sum (``overlap="sum"``).

A stage is *loader-bound* when the loader alone is slower than the model alone
(``model_rate > e x loader_rate``); the echo factor that cures it is the smallest integer
``e* >= model_rate / loader_rate``, which brings the loader's time under the model's.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from etpp_dali.curriculum.schedule import Curriculum, StageSpec
from etpp_dali.data.demo import demo_dataset
from etpp_dali.data.scan import DataError
from etpp_dali.data.sources import open_source
from etpp_dali.loader.loaders import CurriculumLoader
from etpp_dali.train.config import RecipeError
from etpp_dali.train.models import adapt_model_to_band, create_model
from etpp_dali.util.devices import resolve_device

__all__ = ["MeasureError", "Rates", "measure_step_rate", "measure_loader_rate", "measure_rates", "measure_schedule",
           "overlap_for", "seconds_per_epoch", "predict_schedule_time", "format_prediction"]

OVERLAPS = ("max", "sum")


class MeasureError(ValueError):
    """A measurement that cannot be made; the message names the flag."""


@dataclass
class Rates:
    """Images/sec measured on one device: the model at (band, batch), the loader at a band."""

    device: str
    model: str
    train_images: int
    step: dict[tuple[int, int], float] = field(default_factory=dict)  # (band, batch) -> img/s
    loader: dict[int, float] = field(default_factory=dict)            # band -> fresh img/s

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "model": self.model, "train_images": self.train_images,
                "step": [{"band": b, "batch": n, "images_per_s": round(r, 2)}
                         for (b, n), r in sorted(self.step.items())],
                "loader": [{"band": b, "images_per_s": round(r, 2)} for b, r in sorted(self.loader.items())]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Rates":
        return cls(data["device"], data["model"], int(data["train_images"]),
                   {(int(r["band"]), int(r["batch"])): float(r["images_per_s"]) for r in data["step"]},
                   {int(r["band"]): float(r["images_per_s"]) for r in data["loader"]})


def overlap_for(device: str) -> str:
    """``"sum"`` on a CPU (loader and model share the cores), ``"max"`` on a GPU."""
    return "sum" if device.startswith("cpu") else "max"


# ------------------------------------------------------------------------------- timing
def _build_model(name: str, num_classes: int) -> Any:
    """The model as training builds it (:func:`etpp_dali.train.models.create_model`), no drop path."""
    try:
        return create_model(name, num_classes, drop_path=0.0)
    except RecipeError as exc:
        raise MeasureError(str(exc)) from None


def measure_step_rate(model: str | Any, *, band: int, batch: int, device: str = "cpu", steps: int = 8,
                      warmup: int = 2, num_classes: int = 1000, amp: str = "off",
                      channels_last: bool = False) -> float:
    """Images/sec of one training step (forward, backward, AdamW step) at ``band x band`` and
    ``batch``; ``model`` is a timm name or a built module (reused across bands). Median of
    ``steps`` timed steps after ``warmup`` untimed ones."""
    dev = torch.device(device)
    net = (_build_model(model, num_classes) if isinstance(model, str) else model).to(dev)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    adapt_model_to_band(net, band)  # the training rule: Swin windows follow the band
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, band, band, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def measure_loader_rate(data: Any, *, band: int, resolution: int, batch: int, magnitude: float = 9.0,
                        device: str = "cpu", steps: int = 30, warmup: int = 3, threads: int | None = None) -> float:
    """Fresh images/sec of the curriculum loader at one band and magnitude: ``data`` is what
    :class:`~etpp_dali.loader.loaders.CurriculumLoader` takes (a path or a Source). Images over time
    of ``steps`` batches after ``warmup`` (the first builds the pipeline)."""
    cur = Curriculum([StageSpec(band, float(magnitude), 1.0)], budget=10_000, resolution=resolution, split="epochs")
    loader = CurriculumLoader(data, cur, batch_size=batch, device=device, num_threads=threads, verbose=False)
    try:
        batches = _endless(loader)
        for _ in range(warmup):
            next(batches)
        t0, images = time.perf_counter(), 0
        for _ in range(steps):  # prefetching makes single batches bursty: time the window
            images += len(next(batches)[0])
        return images / (time.perf_counter() - t0)
    finally:
        loader.close()


def _endless(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def measure_rates(curriculum: Curriculum, *, model: str, data: str | Path, batch: int, device: str = "cpu",
                  bands: Sequence[int] | None = None, stage_batches: Sequence[int] | None = None,
                  amp: str = "off", channels_last: bool = False, steps: int = 8, warmup: int = 2,
                  loader_steps: int = 30, threads: int | None = None) -> Rates:
    """Time the model at every (band, batch) the schedule uses, plus the full resolution at
    ``batch`` (the baseline), and the loader at every band (at the highest magnitude the
    schedule gives that band). ``bands`` adds bands to time (the search's candidates)."""
    dev = resolve_device(device)
    if threads and dev == "cpu":
        torch.set_num_threads(threads)
    source = open_source(data, "train")
    rates = Rates(dev, model, len(source))
    batches = stage_batch_sizes(curriculum, batch, stage_batches)
    magnitude = {}
    for s, n in zip(curriculum.stages, batches):
        magnitude[s.band] = max(magnitude.get(s.band, 0.0), s.magnitude)
        rates.step[(s.band, n)] = 0.0
    top = max((s.magnitude for s in curriculum.stages), default=9.0)
    for b in [*(bands or ()), curriculum.resolution]:
        magnitude.setdefault(b, top)
        rates.step[(b, batch)] = 0.0
    net = _build_model(model, len(source.classes))
    for b, n in sorted(rates.step):
        rates.step[(b, n)] = measure_step_rate(net, band=b, batch=n, device=dev, steps=steps, warmup=warmup,
                                               num_classes=len(source.classes), amp=amp, channels_last=channels_last)
    for b in sorted(magnitude):
        rates.loader[b] = measure_loader_rate(source, band=b, resolution=curriculum.resolution, batch=batch,
                                              magnitude=magnitude[b], device=dev, steps=loader_steps,
                                              threads=threads)
    return rates


# --------------------------------------------------------------------------- prediction
def _stage_seconds(images: float, *, step_rate: float, loader_rate: float, echo: float,
                   overlap: str) -> tuple[float, float, float]:
    """(model seconds, loader seconds, predicted seconds) for ``images`` trained images."""
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap = {overlap!r}; use one of {', '.join(OVERLAPS)}")
    if step_rate <= 0 or loader_rate <= 0 or echo <= 0:
        raise ValueError("rates and the echo factor must be > 0")
    model_s = images / step_rate
    loader_s = images / (echo * loader_rate)
    return model_s, loader_s, (max(model_s, loader_s) if overlap == "max" else model_s + loader_s)


def seconds_per_epoch(*, train_images: int, step_rate: float, loader_rate: float, echo: float = 1.0,
                      overlap: str = "sum") -> float:
    """Predicted seconds of one data epoch (``train_images x echo`` trained images)."""
    return _stage_seconds(train_images * echo, step_rate=step_rate, loader_rate=loader_rate, echo=echo,
                          overlap=overlap)[2]


def stage_batch_sizes(curriculum: Curriculum, batch: int, stage_batches: Sequence[int] | None = None) -> list[int]:
    """Each stage's batch: ``stage_batches`` when given, else the stage's own (0: ``batch``)."""
    if stage_batches is not None:
        return list(stage_batches)
    return [s.batch or batch for s in curriculum.stages]


def _rate(table: Mapping[Any, float], key: Any, what: str) -> float:
    if key not in table:
        raise KeyError(f"no measured {what} rate for {key}; measure it first")
    return table[key]


def predict_schedule_time(curriculum: Curriculum, *, train_images: int, step_rates: Mapping[tuple[int, int], float],
                          loader_rates: Mapping[int, float], batch: int, stage_batches: Sequence[int] | None = None,
                          echo: Sequence[float] | None = None, overlap: str = "sum",
                          baseline_budget: float | None = None) -> dict[str, Any]:
    """Per stage and in total: the predicted wall-clock, against the baseline (``baseline_budget``
    data epochs at the full resolution, ``batch``, no echo; default the schedule's) next to the
    compute ratio, and ``model_only_speedup``: the baseline's model seconds over the schedule's,
    the wall-clock speed-up with a loader that cost nothing, which no echo factor can pass.

    ``step_rates`` maps (band, batch) to img/s, ``loader_rates`` band to fresh img/s.
    ``stage_batches`` gives each stage's batch (default: the stage's own, else ``batch``); ``echo``
    each stage's echo factor (default the stage's replay factor). Loader-bound stages carry
    ``cure_echo``.
    """
    n = len(curriculum.stages)
    batches = stage_batch_sizes(curriculum, batch, stage_batches)
    echoes = list(echo) if echo is not None else [float(s.replay) for s in curriculum.stages]
    if len(batches) != n or len(echoes) != n:
        raise ValueError(f"stage_batches and echo need one value per stage ({n})")
    rows = []
    for s, b, e in zip(curriculum.stages, batches, echoes):
        m_rate, l_rate = _rate(step_rates, (s.band, b), "model"), _rate(loader_rates, s.band, "loader")
        images = s.epochs * train_images * s.replay
        model_s, loader_s, total = _stage_seconds(images, step_rate=m_rate, loader_rate=l_rate, echo=e, overlap=overlap)
        bound = m_rate > e * l_rate
        rows.append({"stage": s.index, "band": s.band, "batch": b, "echo": e, "epochs": s.epochs, "images": images,
                     "model_s": model_s, "loader_s": loader_s, "predicted_s": total, "loader_bound": bound,
                     "cure_echo": math.ceil(m_rate / l_rate - 1e-9) if bound else None})
    R = curriculum.resolution
    base_epochs = baseline_budget or curriculum.baseline_budget
    base_images = base_epochs * train_images
    base = _stage_seconds(base_images, step_rate=_rate(step_rates, (R, batch), "model"),
                          loader_rate=_rate(loader_rates, R, "loader"), echo=1.0, overlap=overlap)
    total = sum(r["predicted_s"] for r in rows)
    model_total = sum(r["model_s"] for r in rows)
    return {"overlap": overlap, "train_images": train_images, "stages": rows, "predicted_s": total,
            "model_only_speedup": base[0] / model_total if model_total else None,
            "baseline": {"epochs": base_epochs, "band": R, "batch": batch, "images": base_images,
                         "model_s": base[0], "loader_s": base[1], "predicted_s": base[2]},
            "wall_speedup": base[2] / total if total else None, "compute_speedup": curriculum.speedup(base_epochs),
            "loader_bound_stages": [r["stage"] for r in rows if r["loader_bound"]]}


def format_prediction(prediction: Mapping[str, Any], rates: Rates | None = None) -> str:
    """The prediction as the text ``etpp schedule --measure`` prints."""
    lines = []
    if rates is not None:
        lines.append(f"measured on {rates.device}: {rates.model}, {rates.train_images} training images")
        lines.append(f"{'band':>5} {'batch':>6} {'model img/s':>12} {'loader img/s':>13}")
        for (band, batch), r in sorted(rates.step.items()):
            lines.append(f"{band:>5} {batch:>6} {r:>12.0f} {rates.loader.get(band, float('nan')):>13.0f}")
    how = "the longer of model and loader" if prediction["overlap"] == "max" else "model + loader (same cores)"
    lines.append(f"predicted wall-clock per stage ({how}):")
    lines.append(f"{'stage':>5} {'band':>5} {'batch':>6} {'echo':>5} {'images':>9} {'model s':>8} {'loader s':>9} "
                 f"{'predicted s':>12}  loader-bound")
    for r in prediction["stages"]:
        cure = f"yes: echo {r['cure_echo']} cures it" if r["loader_bound"] else "no"
        lines.append(f"{r['stage']:>5} {r['band']:>5} {r['batch']:>6} {r['echo']:>5g} {r['images']:>9.0f} "
                     f"{r['model_s']:>8.1f} {r['loader_s']:>9.1f} {r['predicted_s']:>12.1f}  {cure}")
    base = prediction["baseline"]
    lines.append(f"total {prediction['predicted_s']:.1f} s against {base['predicted_s']:.1f} s for the "
                 f"{base['epochs']:g}-epoch baseline at {base['band']} px: wall-clock speed-up "
                 f"{prediction['wall_speedup']:.2f}x, compute speed-up {prediction['compute_speedup']:.2f}x")
    if prediction.get("model_only_speedup"):
        lines.append(f"with a loader that cost nothing (no echo or loader work can do better here): "
                     f"{prediction['model_only_speedup']:.2f}x, the model's steps alone")
    bound = prediction["loader_bound_stages"]
    if bound:
        worst = max(r["cure_echo"] for r in prediction["stages"] if r["loader_bound"])
        lines.append(f"loader-bound stages: {', '.join(map(str, bound))}; an echo factor of {worst} cures them all")
    else:
        lines.append("no stage is loader-bound")
    return "\n".join(lines)


def measure_schedule(curriculum: Curriculum, *, model: str | None, data: str | Path | None = None, batch: int = 64,
                     device: str = "auto", stage_batches: Sequence[int] | None = None,
                     echo: Sequence[float] | None = None, baseline_budget: float | None = None) -> dict[str, Any]:
    """``etpp schedule --measure``: time ``model`` and the loader on ``data`` (default: the demo
    set) at the schedule's bands on ``device``, and predict its wall-clock. Returns
    ``{"rates", "prediction", "text"}``."""
    if not model:
        raise MeasureError("--measure needs --model NAME (a timm model, e.g. resnet50)")
    if batch < 1:
        raise MeasureError(f"--batch-size {batch} must be >= 1")
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise MeasureError(f"--device {device}: {exc}") from None
    try:
        rates = measure_rates(curriculum, model=model, data=data or demo_dataset(), batch=batch, device=dev,
                              stage_batches=stage_batches)
    except DataError as exc:
        raise MeasureError(f"--data: {exc}") from None
    prediction = predict_schedule_time(curriculum, train_images=rates.train_images, step_rates=rates.step,
                                       loader_rates=rates.loader, batch=batch, stage_batches=stage_batches,
                                       echo=echo, overlap=overlap_for(dev), baseline_budget=baseline_budget)
    return {"rates": rates.to_dict(), "prediction": prediction, "text": format_prediction(prediction, rates)}
