"""Benchmarks of the Fourier crop (alone, and inside a DALI pipeline), and what every benchmark
shares: the machine record, Markdown tables and the JSON writer.

The crop comparisons run side by side in one process, interleaved round by round: they time
operators of one pipeline, not loaders with their own workers. The loader benchmark times each
loader alone in its own process (:mod:`etpp_dali.bench.loader`); time to accuracy is in
:mod:`etpp_dali.bench.train`.
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

from etpp_dali.util.files import write_text_atomic

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

    from etpp_dali.ops.fourier import FourierCropper

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

    from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, lowpass, resize

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
    medians are compared (the exact crop should keep at least 85% of the resize's images/sec).
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
