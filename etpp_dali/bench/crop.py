"""Benchmarks of the Fourier crop: alone (``etpp bench op``), and inside a DALI pipeline against
the resize to the band (``etpp bench crop``).

The comparisons run side by side in one process, interleaved round by round: they time operators
of one pipeline, not loaders with their own workers (those: :mod:`etpp_dali.bench.loader`).
"""

from __future__ import annotations

import functools
import statistics
from typing import Any, Callable, Sequence

import torch
from nvidia.dali import fn, pipeline_def, types

from etpp_dali.bench.record import median_rate
from etpp_dali.ops.dali_ops import IMAGENET_MEAN_255, IMAGENET_STD_255, lowpass, resize
from etpp_dali.ops.fourier import FourierCropper

__all__ = ["bench_op", "bench_crop_pipeline"]


def _step(work: Callable[[], Any], images: int) -> Callable[[], int]:
    """A step for :func:`~etpp_dali.bench.record.median_rate`: ``work()``, then its image count."""
    def step() -> int:
        work()
        return images

    return step


def _test_batch(shape: tuple[int, ...], dtype: str, device: torch.device) -> torch.Tensor:
    if dtype == "uint8":
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    return torch.randn(shape, dtype=getattr(torch, dtype), device=device)


def _copy_rate(x: torch.Tensor, windows: int, steps: int) -> float:
    """Images/sec of a device-to-device copy of ``x`` (CUDA): what the op is read against."""
    dst = torch.empty_like(x)
    return median_rate(_step(functools.partial(dst.copy_, x), len(x)), warmup=3, windows=windows,
                       steps_per_window=steps * 10, sync=torch.cuda.synchronize)["median"]


# ------------------------------------------------------------------------------------ op
def bench_op(*, device: str = "cpu", backends: Sequence[str] = ("matmul", "fft"),
             input_size: int = 224, bands: Sequence[int] = (96, 160), batch: int = 64,
             layout: str = "NCHW", dtype: str = "float32", threads: int | None = None,
             windows: int = 5, steps: int = 3) -> list[dict[str, Any]]:
    """Images/sec of the Fourier crop alone, per backend and band (buffers reused, as in DALI).

    On CUDA each row also gives the time of one device-to-device copy of the input batch, so
    the op can be read against the memory bandwidth.
    """
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    shape = (batch, 3, input_size, input_size) if layout == "NCHW" else (batch, input_size, input_size, 3)
    x = _test_batch(shape, dtype, dev)
    cuda = dev.type == "cuda"
    copy_rate = _copy_rate(x, windows, steps) if cuda else None
    croppers = {b: FourierCropper(b) for b in backends}  # their buffers are reused, as in the pipeline
    rows = []
    for band in bands:
        for backend in backends:
            crop = functools.partial(croppers[backend], x, band, layout=layout, out_layout="NCHW")
            r = median_rate(_step(crop, batch), warmup=2, windows=windows, steps_per_window=steps,
                            sync=torch.cuda.synchronize if cuda else None)
            row = {"device": device, "backend": backend, "input": input_size, "band": band,
                   "batch": batch, "layout": layout, "dtype": dtype,
                   "threads": None if cuda else torch.get_num_threads(),
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
                   resolution: int, backend: str, seed: int) -> Any:
    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=seed, prefetch_queue_depth=2)
    def crop_pipe() -> tuple:
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
    torch.set_num_threads(threads)
    files = list(files)
    rows = []
    for band in bands:
        variants = {"resize": ("resize", "auto")} | {f"fourier-{b}": ("fourier", b) for b in backends}
        pipes = {name: _crop_pipeline(files, band, mode, batch=batch, threads=threads, resolution=resolution,
                                      backend=backend, seed=1) for name, (mode, backend) in variants.items()}
        samples: dict[str, list[float]] = {name: [] for name in pipes}
        for _ in range(rounds):
            for name, pipe in pipes.items():
                r = median_rate(_step(pipe.run, batch), warmup=2, windows=1, steps_per_window=steps)
                samples[name].append(r["median"])
        med = {k: statistics.median(v) for k, v in samples.items()}
        row = {"band": band, "resolution": resolution, "batch": batch, "threads": threads,
               "images_per_s": {k: round(v, 1) for k, v in med.items()}}
        row["ratio_vs_resize"] = {k: round(v / med["resize"], 3) for k, v in med.items() if k != "resize"}
        rows.append(row)
        del pipes
    return rows
