"""Benchmarks: the Fourier crop alone, inside a DALI pipeline, and (in loader/trainer modules) more.

Every comparison is measured side by side in one process and one run, interleaved round by
round, because the machines are shared and noisy: the ratios are what to read. Each figure is
the median of several timed windows after a warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .files import write_text_atomic

__all__ = ["machine_info", "median_rate", "bench_op", "bench_crop_pipeline", "write_results",
           "peak_rss_mb", "markdown_table"]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU and package versions: stored with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
                            "platform": platform.platform(), "gpu": None}
    for name in ("torch", "torchvision", "timm", "numpy", "PIL", "nvidia.dali"):
        try:
            mod = __import__(name, fromlist=["__version__"])
            info[name.replace("nvidia.", "")] = getattr(mod, "__version__", "?")
        except Exception:
            info[name.replace("nvidia.", "")] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    VmHWM from /proc, not ``ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so
    a child started from a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_rate(step: Callable[[], int], *, warmup: int, windows: int, steps_per_window: int,
                sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Run ``step`` (returns images done); images/sec per window, median and spread."""
    for _ in range(warmup):
        step()
    if sync:
        sync()
    rates = []
    for _ in range(windows):
        t0, images = time.perf_counter(), 0
        for _ in range(steps_per_window):
            images += step()
        if sync:
            sync()
        rates.append(images / (time.perf_counter() - t0))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


# ------------------------------------------------------------------------------------ op
def bench_op(*, device: str = "cpu", backends: Sequence[str] = ("matmul", "fft"),
             input_size: int = 224, bands: Sequence[int] = (96, 160), batch: int = 64,
             layout: str = "NCHW", dtype: str = "float32", threads: int | None = None,
             windows: int = 5, steps: int = 3) -> list[dict[str, Any]]:
    """Images/sec of the Fourier crop alone, per backend and band (buffers reused, as in DALI).

    On CUDA each row also gives the time of one device-to-device copy of the input batch, so
    the op can be read against the memory bandwidth.
    """
    import torch

    from .fourier import FourierCropper

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    shape = (batch, 3, input_size, input_size) if layout == "NCHW" else (batch, input_size, input_size, 3)
    if dtype == "uint8":
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=dev)
    else:
        x = torch.randn(shape, dtype=getattr(torch, dtype), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rows = []
    copy_rate = None
    if dev.type == "cuda":
        dst = torch.empty_like(x)
        copy_rate = median_rate(lambda: (dst.copy_(x), batch)[1], warmup=3, windows=windows,
                                steps_per_window=steps * 10, sync=sync)["median"]
    croppers = {b: FourierCropper(b) for b in backends}
    for band in bands:
        for backend in backends:
            crop = croppers[backend]
            r = median_rate(lambda: (crop(x, band, layout=layout, out_layout="NCHW"), batch)[1],
                            warmup=2, windows=windows, steps_per_window=steps, sync=sync)
            row = {"device": device, "backend": backend, "input": input_size, "band": band,
                   "batch": batch, "layout": layout, "dtype": dtype,
                   "threads": torch.get_num_threads() if dev.type == "cpu" else None,
                   "images_per_s": round(r["median"], 1), "min": round(r["min"], 1), "max": round(r["max"], 1)}
            if copy_rate:
                bytes_per_image = x[0].numel() * x.element_size()
                row["copy_images_per_s"] = round(copy_rate, 1)
                row["copy_GBps"] = round(copy_rate * bytes_per_image * 2 / 1e9, 1)  # read + write
                row["op_time_in_copies"] = round(copy_rate / r["median"], 2)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------ crop in a pipeline
def _crop_pipeline(files: list[str], band: int, mode: str, *, batch: int, threads: int,
                   resolution: int, backend: str, seed: int):
    from nvidia.dali import fn, pipeline_def, types

    from .dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, lowpass, resize

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=seed, prefetch_queue_depth=2)
    def crop_pipe():
        jpegs, labels = fn.readers.file(files=files, labels=[0] * len(files), random_shuffle=True)
        img = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
        img = resize(img, size=(resolution, resolution))  # the production resize (torch, bicubic)
        img = fn.flip(img, horizontal=fn.random.coin_flip())
        return lowpass(img, band, mode=mode, mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255, backend=backend), labels

    pipe = crop_pipe()
    pipe.build()
    return pipe


def bench_crop_pipeline(files: Sequence[str], *, bands: Sequence[int] = (96, 160), batch: int = 64,
                        threads: int = 2, resolution: int = 224, backends: Sequence[str] = ("matmul", "fft"),
                        rounds: int = 3, steps: int = 8) -> list[dict[str, Any]]:
    """Decode, random crop to R, flip, then the crop to B (normalised) vs the resize to B.

    Per band, the pipelines run in turn for ``rounds`` rounds of ``steps`` batches each; the
    medians are compared (the issue's target: exact crop >= 85% of the resize's images/sec).
    """
    import torch

    torch.set_num_threads(threads)
    files = list(files)
    rows = []
    for band in bands:
        variants = {"resize": _crop_pipeline(files, band, "resize", batch=batch, threads=threads,
                                             resolution=resolution, backend="auto", seed=1)}
        for b in backends:
            variants[f"fourier-{b}"] = _crop_pipeline(files, band, "fourier", batch=batch, threads=threads,
                                                      resolution=resolution, backend=b, seed=1)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, pipe in variants.items():
                r = median_rate(lambda: (pipe.run(), batch)[1], warmup=2, windows=1, steps_per_window=steps)
                samples[name].append(r["median"])
        med = {k: statistics.median(v) for k, v in samples.items()}
        row = {"band": band, "resolution": resolution, "batch": batch, "threads": threads,
               "images_per_s": {k: round(v, 1) for k, v in med.items()}}
        row["ratio_vs_resize"] = {k: round(v / med["resize"], 3) for k, v in med.items() if k != "resize"}
        rows.append(row)
        del variants
    return rows


# -------------------------------------------------------------------------------- loader
def _cycle_curriculum_loader(data: Any, band: int, magnitude: float, *, resolution: int, batch: int,
                             threads: int, lowpass: str = "fourier", randaugment: bool = True,
                             device: str = "cpu"):
    """Endless batches of our loader at one fixed stage (band, magnitude)."""
    from .curriculum import Curriculum, StageSpec
    from .loader import CurriculumLoader

    cur = Curriculum([StageSpec(band, float(magnitude), 1.0)], budget=10_000, resolution=resolution, split="epochs")
    loader = CurriculumLoader(data, cur, batch_size=batch, device=device, num_threads=threads, lowpass=lowpass,
                              randaugment=randaugment, verbose=False)

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for x, _ in loader:
                yield len(x)
            epoch += 1

    return batches()


def _cycle_reference_loader(samples, band: int, magnitude: float, *, resolution: int, batch: int, workers: int):
    from .reference import reference_loader

    loader = reference_loader(samples, resolution=resolution, band=band, magnitude=magnitude,
                              batch_size=batch, workers=workers)

    def batches():
        while True:
            for x, _ in loader:
                yield len(x)

    return batches()


def _cycle_decode_only(files: list[str], *, batch: int, threads: int, device: str = "cpu"):
    """JPEG decoding alone (DALI's decoder, the same threads): the bound for any pipeline."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if device == "gpu" else None, seed=0)
    def decode():
        jpegs, _ = fn.readers.file(files=files, random_shuffle=True)
        return fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)

    return _endless(decode(), batch)


def _endless(pipe: Any, batch: int):
    """Build ``pipe`` and run it forever, yielding the images each run produced."""
    pipe.build()
    while True:
        pipe.run()
        yield batch


def _cycle_decode_crop_resize(source: Any, *, resolution: int, batch: int, threads: int, device: str = "cpu"):
    """Our decode of the random-resized-crop window and resize to R (+ flip), nothing else:
    the part of the pipeline the issue sets against decoding alone."""
    from nvidia.dali import fn, pipeline_def

    from .dali_ops import resize
    from .pipeline import PipelineConfig, _decoder_args, sample_crop_windows

    cfg = PipelineConfig(resolution=resolution, batch_size=batch, num_threads=threads, device=device)
    sizes = source.sizes
    state = {"step": 0}

    def feed():
        rng = np.random.default_rng([0, state["step"]])
        state["step"] += 1
        idx = rng.integers(0, len(source), batch)
        anchor, shape = sample_crop_windows(rng, sizes[idx])
        return [source.read(int(i)) for i in idx], anchor, shape, (rng.random(batch) < 0.5).astype(np.int32)

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if device == "gpu" else None, seed=0)
    def crop_resize():
        jpegs, anchor, shape, flip = fn.external_source(source=feed, num_outputs=4, batch=True)
        img = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="HW", normalized_anchor=False,
                                      normalized_shape=False, **_decoder_args(cfg))
        return fn.flip(resize(img, size=(resolution, resolution), interpolation=cfg.interpolation), horizontal=flip)

    return _endless(crop_resize(), batch)


def _rate(it, steps: int) -> float:
    t0 = time.perf_counter()
    n = sum(next(it) for _ in range(steps))
    return n / (time.perf_counter() - t0)


def bench_loader(data: str, *, bands: Sequence[int] = (96, 160, 224), magnitude: float = 9.0, batch: int = 64,
                 threads: int = 2, resolution: int = 224, rounds: int = 3, steps: int = 4, warmup: int = 3,
                 device: str = "cpu", reference: bool = True) -> dict[str, Any]:
    """Images/sec of (a) ours, (b) ours with the resize approximation, (c) the reference loader,
    (d) decoding alone, (e) our decode + random crop + resize (+ flip) alone and (f) our whole
    loader without augmentation (float CHW batches at R), interleaved round by round in this
    one process; medians of the rounds."""
    import torch

    from .sources import open_source

    torch.set_num_threads(threads)
    source = open_source(data, "train")
    files = [r.path for r in source.records]
    samples = [(r.path, r.label) for r in source.records]
    gpu = "gpu" if device == "cuda" else "cpu"
    shared = {"decode_only": _cycle_decode_only(files, batch=batch, threads=threads, device=gpu),
              "decode_crop_resize": _cycle_decode_crop_resize(source, resolution=resolution, batch=batch,
                                                              threads=threads, device=gpu),
              "ours_no_augment": _cycle_curriculum_loader(source, resolution, 0.0, resolution=resolution, batch=batch,
                                                          threads=threads, randaugment=False, device=device)}
    per_band = {}
    for band in bands:
        per_band[band] = {
            "ours": _cycle_curriculum_loader(source, band, magnitude, resolution=resolution, batch=batch,
                                             threads=threads, device=device),
            "ours_resize": _cycle_curriculum_loader(source, band, magnitude, resolution=resolution, batch=batch,
                                                    threads=threads, lowpass="resize", device=device),
        }
        if reference:
            per_band[band]["reference"] = _cycle_reference_loader(samples, band, magnitude, resolution=resolution,
                                                                  batch=batch, workers=threads)
    every = list(shared.items()) + [((band, k), it) for band, d in per_band.items() for k, it in d.items()]
    for _, it in every:
        for _ in range(warmup):
            next(it)
    samples_by: dict[Any, list[float]] = {key: [] for key, _ in every}
    for _ in range(rounds):
        for key, it in every:
            samples_by[key].append(_rate(it, steps))
    med = {key: statistics.median(v) for key, v in samples_by.items()}
    rows = []
    for band in bands:
        row = {"band": band, "magnitude": magnitude, "ours": round(med[(band, "ours")], 1),
               "ours_resize": round(med[(band, "ours_resize")], 1),
               "reference": round(med[(band, "reference")], 1) if reference else None,
               "decode_only": round(med["decode_only"], 1)}
        row["ratio_vs_reference"] = round(row["ours"] / row["reference"], 3) if reference else None
        row["ratio_vs_decode"] = round(row["ours"] / row["decode_only"], 3)
        row["ratio_resize_vs_reference"] = round(row["ours_resize"] / row["reference"], 3) if reference else None
        rows.append(row)
    no_aug = {"images_per_s": round(med["ours_no_augment"], 1),
              "ratio_vs_decode": round(med["ours_no_augment"] / med["decode_only"], 3),
              "decode_crop_resize_images_per_s": round(med["decode_crop_resize"], 1),
              "decode_crop_resize_ratio_vs_decode": round(med["decode_crop_resize"] / med["decode_only"], 3)}
    return {"bands": rows, "no_augment": no_aug, "threads": threads, "batch": batch, "resolution": resolution,
            "device": device, "images": len(source), "rounds": rounds, "steps_per_round": steps,
            "peak_rss_mb_all_loaders": round(peak_rss_mb(), 1)}


def loader_peak_rss(data: str, *, band: int, magnitude: float, batch: int, threads: int, resolution: int,
                    steps: int = 30, device: str = "cpu") -> float:
    """Peak RSS (MiB) of a process that runs only our loader for ``steps`` batches."""
    import subprocess

    code = ("from etpp_dali.benchmark import _cycle_curriculum_loader as c, peak_rss_mb; "
            f"it = c({str(data)!r}, {band}, {magnitude}, resolution={resolution}, batch={batch}, threads={threads}, "
            f"device={device!r}); [next(it) for _ in range({steps})]; print(peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


# -------------------------------------------------------------------------------- train
def _time_to(history: Sequence[dict[str, Any]], top1: float) -> float | None:
    """Wall-clock seconds at the first evaluation reaching ``top1`` (None if never)."""
    for row in history:
        if row.get("top1") is not None and row["top1"] >= top1:
            return row["time"]
    return None


def bench_train(base: Any, output: str | Path) -> dict[str, Any]:
    """EfficientTrain++ and the full-resolution baseline, same trainer, data and seed, one after
    the other in this process; evaluation every epoch so time-to-accuracy can be read."""
    from .trainer import Trainer

    runs: dict[str, Any] = {}
    for name, overrides in (("etpp", {}), ("baseline", {"baseline": True})):
        cfg = _replace(base, output=str(Path(output) / name), val_every=1, **overrides)
        trainer = Trainer(cfg)
        try:
            summary = trainer.run()
        finally:
            trainer.close()
        runs[name] = {"summary": summary, "history": trainer.history}
    target = runs["baseline"]["summary"]["top1"]
    rows = []
    for name in ("etpp", "baseline"):
        s, hist = runs[name]["summary"], runs[name]["history"]
        rows.append({"run": name, "schedule": s["schedule"], "epochs": s["epochs_done"], "wall_s": s["wall_s"],
                     "images_seen": sum(r["images"] for r in hist), "top1": s["top1"], "top5": s["top5"],
                     "relative_compute": s["relative_compute"],
                     "time_to_baseline_top1_s": _time_to(hist, target) if target is not None else None,
                     "stall_by_stage": [{k: st[k] for k in ("stage", "band", "stall_fraction", "images_per_s")}
                                        for st in s["stages"] if st["done"]]})
    et_row, base_row = rows
    reach = et_row["time_to_baseline_top1_s"]
    return {
        "runs": rows,
        "wall_speedup": round(base_row["wall_s"] / et_row["wall_s"], 3) if et_row["wall_s"] else None,
        "compute_speedup": round(base_row["relative_compute"] / et_row["relative_compute"], 3),
        "time_to_accuracy_speedup": round(base_row["wall_s"] / reach, 3) if reach else None,
        "curves": {name: [(r["time"] / 60, r["top1"]) for r in runs[name]["history"] if r.get("top1") is not None]
                   for name in runs},
    }


def _replace(cfg: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------- outputs
def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    rows = list(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def write_results(doc: dict[str, Any], path: str | Path | None) -> str:
    """JSON text of ``doc`` (with the machine), written atomically to ``path`` when given."""
    doc = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **doc}
    text = json.dumps(doc, indent=2)
    if path:
        write_text_atomic(path, text + "\n")
    return text
