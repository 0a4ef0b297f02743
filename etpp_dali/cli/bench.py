"""``etpp bench``: images/sec of the crop, the loader and training, side by side in one run; each
command prints a Markdown table and, with --json, writes the JSON and the table beside it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from etpp_dali.cli.options import check_device, fail, int_list

__all__ = ["bench"]


@click.group()
def bench() -> None:
    """Benchmarks: images/sec of the crop, the loader and training, side by side in one run."""


@bench.command("op")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backends", default="matmul,fft", show_default=True)
@click.option("--bands", default="96,160", show_default=True)
@click.option("--input-size", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64", "uint8"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (CPU); default: all cores.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_op_cmd(device: str, backends: str, bands: str, input_size: int, batch_size: int, layout: str, dtype: str,
                 threads: int | None, json_path: str | None) -> None:
    """The Fourier crop alone: images/sec per backend and band (and against a copy on CUDA)."""
    from etpp_dali.bench.crop import bench_op
    from etpp_dali.bench.record import markdown_table

    backend_list = [b.strip() for b in backends.split(",") if b.strip()]
    for b in backend_list:
        if b not in ("matmul", "fft"):
            fail(f"--backends: {b!r} is unknown; use matmul and/or fft")
    check_device(device)
    rows = bench_op(device=device, backends=backend_list, input_size=input_size, bands=int_list(bands, "--bands"),
                    batch=batch_size, layout=layout, dtype=dtype, threads=threads)
    cols = ["device", "backend", "input", "band", "batch", "layout", "dtype", "threads", "images_per_s"]
    if device.startswith("cuda"):
        cols += ["copy_GBps", "op_time_in_copies"]
    _emit({"benchmark": "op", "rows": rows}, json_path, markdown_table(rows, cols))


@bench.command("crop")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="ImageFolder (train/ inside or classes).")
@click.option("--bands", default="96,160", show_default=True)
@click.option("--resolution", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
def bench_crop_cmd(data_dir: str, bands: str, resolution: int, batch_size: int, threads: int, rounds: int,
                   json_path: str | None) -> None:
    """Decode, random crop, flip, then the exact crop vs the resize to B, in one DALI CPU run."""
    from etpp_dali.bench.crop import bench_crop_pipeline
    from etpp_dali.bench.record import markdown_table
    from etpp_dali.data.scan import DataError, scan_dataset

    band_list = int_list(bands, "--bands")
    try:
        scan = scan_dataset(data_dir)
    except DataError as exc:
        fail(f"--data: {exc}")
    files = [r.path for r in scan.train.records]
    rows = bench_crop_pipeline(files, bands=band_list, batch=batch_size, threads=threads, resolution=resolution,
                               rounds=rounds)
    table = markdown_table(rows, ["band", "resolution", "batch", "threads", "images_per_s", "ratio_vs_resize"])
    _emit({"benchmark": "crop", "data": str(data_dir), "images": len(files), "rows": rows}, json_path, table)


@bench.command("loader")
@click.option("--data", "data_dir", required=True, type=click.Path(),
              help="ImageFolder root (train/ inside or classes) or a .txt file list.")
@click.option("--bands", default="96,160,224", show_default=True)
@click.option("--magnitude", type=float, default=9.0, show_default=True,
              help="RandAugment magnitude (whole number, 0-10).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="DALI threads = DataLoader workers.")
@click.option("--resolution", type=int, default=224, show_default=True)
@click.option("--loaders", default=None,
              help="Which loaders to time, comma-separated (default: ours and every loader it is set against).")
@click.option("--breakdown", is_flag=True, help="Also time our graph cut after each stage (where the time goes).")
@click.option("--rounds", type=int, default=2, show_default=True,
              help="Windows per loader and band, in alternating order.")
@click.option("--warmup", type=int, default=3, show_default=True,
              help="Warm-up batches beyond the loader's prefetch depth.")
@click.option("--min-batches", type=int, default=10, show_default=True,
              help="Each window times at least this many batches...")
@click.option("--min-seconds", type=float, default=3.0, show_default=True, help="...and at least this many seconds.")
@click.option("--files", type=int, default=2000, show_default=True, help="Images sampled from the data set (once).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: the mixed decoder for every DALI loader.")
@click.option("--time-limit", type=float, default=None,
              help="Start no window past this many seconds; write what was measured.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of images/sec and ratios per band.")
def bench_loader_cmd(data_dir: str, bands: str, loaders: str | None, device: str, json_path: str | None,
                     plot: str | None, **settings: Any) -> None:
    """Images/sec of our loader and the loaders a user would pick instead, each timed alone in its
    own process, in rounds of alternating order: median and range per loader and band."""
    from etpp_dali.bench.loader import BenchError, LoaderBenchSettings, bench_loader
    from etpp_dali.bench.report import loader_tables, plot_loader_bench

    if loaders is not None:  # else the settings' default: ours and every loader it is set against
        settings["loaders"] = [n.strip() for n in loaders.split(",") if n.strip()]
    config = LoaderBenchSettings(bands=int_list(bands, "--bands"), device=device, batch=settings.pop("batch_size"),
                                 **settings)
    try:
        config.validate()
        if device == "cuda":
            check_device(device)
        doc = bench_loader(data_dir, config, log=lambda line: click.echo(line, err=True))
    except BenchError as exc:
        fail(str(exc))
    if plot:
        plot_loader_bench(doc, plot)
    _emit({"benchmark": "loader", **doc}, json_path, loader_tables(doc))
    if doc["errors"] or doc["isolation"]["violations"]:  # the results are written; the status says not all is well
        click.echo(f"{len(doc['errors'])} window(s) failed, {len(doc['isolation']['violations'])} isolation "
                   "violation(s); the other figures are written", err=True)
        sys.exit(1)


@bench.command("train")
@click.option("--data", default=None,
              help="ImageFolder root with train/ and val/ (default: the recipe's, the demo set).")
@click.option("--recipe", default="demo", show_default=True, help="Recipe for both runs (its schedule is ET++'s).")
@click.option("--model", default=None)
@click.option("--budget", type=float, default=None, help="ET++ budget E (full-resolution epochs of compute).")
@click.option("--baseline-budget", type=float, default=None, help="Epochs of the baseline run.")
@click.option("--resolution", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--device", default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-every", type=int, default=1, show_default=True, help="Evaluate both runs every N epochs.")
@click.option("--output", default="runs/bench-train", show_default=True, help="Folder for both runs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of top-1 against wall-clock.")
def bench_train_cmd(recipe: str, val_every: int, output: str, json_path: str | None, plot: str | None,
                    **flags: Any) -> None:
    """ET++ against the baseline with the same trainer, seed and evaluation schedule: top-1 against
    training wall-clock, the speed-ups, and per stage the images/sec and the loader's share."""
    from etpp_dali.bench.train import bench_train
    from etpp_dali.train.config import RecipeError, merge_recipe
    from etpp_dali.util.plots import plot_curves

    if flags["data"] is not None and not Path(flags["data"]).is_dir():
        fail(f"--data {flags['data']}: no such folder; give an ImageFolder root with train/ and val/")
    if val_every < 1:
        fail(f"--val-every {val_every}: must be >= 1")
    out = Path(output)
    if any(out.glob("*/last.pt")):
        fail(f"--output {out} holds runs already; choose another folder")
    try:
        doc = bench_train(merge_recipe(recipe, {**flags, "progress": False}), out, val_every=val_every)
    except RecipeError as exc:
        fail(str(exc))
    if plot:
        plot_curves(doc["curves"], plot, "training wall-clock (min; evaluation excluded)", "val top-1 (%)",
                    "ET++ against the baseline")
    _emit({"benchmark": "train", **doc}, json_path, _train_table(doc))


@bench.command("mae")
@click.option("--recipe", default="mae_demo", show_default=True, help="The MAE recipe (its schedule is ET++'s).")
@click.option("--budget", type=float, default=None, help="ET++ budget E; the baselines train E and --ratio x E epochs.")
@click.option("--ratio", type=float, default=1.5, show_default=True, help="The larger baseline's compute over E.")
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated seeds.")
@click.option("--finetune-recipe", default="demo", show_default=True, help="The supervised recipe each encoder "
              "is fine-tuned with (--init-from), and a classifier trained from scratch.")
@click.option("--finetune-budget", type=float, default=4.0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--output", default="runs/bench-mae", show_default=True, help="Folder for every run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of k-NN top-1 against wall-clock.")
def bench_mae_cmd(recipe: str, budget: float | None, ratio: float, seeds: str, finetune_recipe: str,
                  finetune_budget: float, threads: int | None, output: str, json_path: str | None,
                  plot: str | None) -> None:
    """MAE with ET++ against plain MAE at equal and --ratio x the compute, over seeds: pre-training
    wall-clock, compute, k-NN top-1 and the top-1 after a short fine-tune of each encoder."""
    from etpp_dali.bench.mae import bench_mae, mae_tables
    from etpp_dali.train.config import RecipeError, merge_recipe
    from etpp_dali.util.plots import plot_curves

    if ratio <= 0:
        fail(f"--ratio {ratio}: must be > 0")
    out = Path(output)
    if any(out.glob("*/last.pt")):
        fail(f"--output {out} holds runs already; choose another folder")
    try:
        base = merge_recipe(recipe, {"budget": budget, "threads": threads, "progress": False})
        if base.task != "mae":
            raise RecipeError(f"--recipe {recipe}: not an MAE recipe (task: {base.task}); use e.g. mae_demo")
        doc = bench_mae(base, out, seeds=_seeds(seeds), ratio=ratio, finetune_recipe=finetune_recipe,
                        finetune_budget=finetune_budget)
    except RecipeError as exc:
        fail(str(exc))
    _emit({"benchmark": "mae", **doc}, json_path, mae_tables(doc))
    if plot:
        written = plot_curves(doc["curves"], plot, "pre-training wall-clock (min; evaluation excluded)",
                              "k-NN top-1 (%)", "MAE: ET++ against the baseline")
        click.echo(f"plot written to {written}")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        fail(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1")
    return seeds


def _train_table(doc: dict[str, Any]) -> str:
    from etpp_dali.bench.record import markdown_table

    table = markdown_table(doc["runs"], ["run", "schedule", "epochs", "train_s", "outside_training_s", "images_seen",
                                         "top1", "relative_compute", "time_to_baseline_top1_s"])
    stages = "\n".join(f"{r['run']}: " + ", ".join(
        f"B={s['band']} r={s.get('echo') or 1} {s['images_per_s'] or 0:.0f} img/s, loader {s['loader_share'] or 0:.0%}"
        for s in r["stages"])
        for r in doc["runs"])
    return (f"{table}\n\nwall-clock speed-up {doc['wall_speedup']}x, compute {doc['compute_speedup']}x, time to the "
            f"baseline's final top-1 ({doc['baseline_final_top1']}) {doc['time_to_accuracy_speedup']}x\n"
            "per stage: echo factor r, images/sec and the loader's share of the step time (waiting for data)\n"
            f"{stages}")


def _emit(doc: dict[str, Any], json_path: str | None, table: str) -> None:
    """Print the Markdown table; with --json also write the JSON and the table beside it (.md)."""
    from etpp_dali.bench.record import write_results

    write_results(doc, json_path)
    click.echo(table)
    if json_path:
        md = Path(json_path).with_suffix(".md")
        md.write_text(f"{doc.get('benchmark', 'benchmark')} ({json_path})\n\n{table}\n")
        click.echo(f"results written to {json_path} and {md}")
