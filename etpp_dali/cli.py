"""The ``etpp`` command line. Heavy imports (torch, DALI) happen inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from etpp_dali import __version__
from etpp_dali.bench.loaders import DEFAULT_LOADERS
from etpp_dali.curriculum.schedule import FAMILIES, PRESETS, Curriculum, ScheduleError

_MEASURE_BATCH = 64  # the batch `etpp schedule --measure` times at without --batch-size


def _fail(message: str) -> None:
    """One clear line on stderr and exit status 2 (bad input), as click does for usage errors."""
    raise click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="etpp")
def main() -> None:
    """EfficientTrain++ curriculum training on an NVIDIA DALI data pipeline."""


@main.command()
@click.option("--preset", default="etpp", show_default=True,
              help=f"A preset ({', '.join(PRESETS)}) or a YAML/JSON schedule file.")
@click.option("--family", type=click.Choice(sorted(FAMILIES)), default="resnet", show_default=True,
              help="Model family of the etpp preset (sets the bands).")
@click.option("--budget", type=float, default=None,
              help="Budget E in full-resolution epochs (etpp; default 200) or epochs (et, baseline; 300).")
@click.option("--resolution", type=int, default=None,
              help="Full resolution R; bands scale as B*R/224 (default 224, or the file's).")
@click.option("--replay", is_flag=True, help="Turn on the reference's replay presets (etpp).")
@click.option("--batch-size", type=int, default=None,
              help="Per-device batch at full resolution: adds each stage's batch and accumulation to the table "
                   f"(and the batch --measure times at; default {_MEASURE_BATCH}).")
@click.option("--global-batch", type=int, default=None, help="Images per optimiser step (default: batch x devices).")
@click.option("--stage-batch", default=None, help="auto, or per-device batches, one a stage (0: --batch-size).")
@click.option("--devices", type=int, default=1, show_default=True, help="Devices the global batch is spread over.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a PNG of band and magnitude against the compute fraction.")
@click.option("--measure", is_flag=True,
              help="Time --model and the loader at each band here; predict each stage's wall-clock.")
@click.option("--model", default=None, help="With --measure: the timm model to time.")
@click.option("--device", default="auto", show_default=True, help="With --measure: cpu or cuda.")
@click.option("--data", default=None, help="With --measure: the data the loader reads (default: the demo set).")
@click.option("--baseline-budget", type=float, default=None,
              help="Epochs of the baseline the speed-ups are against (default: the schedule's; 300 for presets).")
def schedule(preset: str, family: str, budget: float | None, resolution: int | None, replay: bool,
             batch_size: int | None, global_batch: int | None, stage_batch: str | None, devices: int,
             as_json: bool, plot: str | None, measure: bool, model: str | None, device: str, data: str | None,
             baseline_budget: float | None) -> None:
    """Print a curriculum: per stage its band, magnitude, replay, data epochs (and with
    --batch-size its per-device batch and gradient accumulation); then the totals. With
    --measure, also the wall-clock predicted from timings on this machine."""
    try:
        cur = Curriculum.resolve(preset, family=family, budget=budget, resolution=resolution, replay=replay,
                                 baseline_budget=baseline_budget)
    except ScheduleError as exc:
        _fail(str(exc))
    summary = cur.summary(baseline_budget)
    if batch_size is not None:
        cur = _add_stage_batches(summary, cur, batch_size, global_batch, stage_batch, devices)
    elif global_batch is not None or stage_batch is not None:
        _fail("--global-batch and --stage-batch need --batch-size (the per-device batch at full resolution)")
    if measure:
        from etpp_dali.train.measure import MeasureError, measure_schedule

        try:  # each stage timed at its own batch (the schedule's, or the --stage-batch ones)
            summary["measure"] = measure_schedule(cur, model=model, data=data, batch=batch_size or _MEASURE_BATCH,
                                                  device=device, baseline_budget=baseline_budget)
        except MeasureError as exc:
            _fail(str(exc))
    if plot:
        from etpp_dali.util.plots import plot_schedule

        summary["plot"] = str(plot_schedule(cur, plot))
    if as_json:
        if measure:
            summary["measure"].pop("text")
        click.echo(json.dumps(summary, indent=2))
        return
    _print_schedule(cur, summary)


def _add_stage_batches(summary: dict, cur: Curriculum, batch_size: int, global_batch: int | None,
                       stage_batch: str | None, devices: int) -> Curriculum:
    """Resolve the stages' batches as a run would, add them (and the accumulation) to the rows,
    and return the schedule with them."""
    from etpp_dali.curriculum.batching import BatchError, global_batch_size, resolve_stage_batches, stage_batch_rows

    for flag, value in (("--batch-size", batch_size), ("--global-batch", global_batch), ("--devices", devices)):
        if value is not None and value < 1:
            _fail(f"{flag} {value}: must be >= 1")
    rule = None if stage_batch is None else _stage_batch_option(stage_batch)
    try:
        resolved = resolve_stage_batches(cur, batch_size=batch_size, global_batch=global_batch, world=devices,
                                         stage_batch=rule)
    except (BatchError, ScheduleError) as exc:
        _fail(str(exc))
    total = global_batch_size(batch_size, global_batch, devices)
    for row, extra in zip(summary["stages"], stage_batch_rows(resolved, batch_size, total, devices)):
        row.update(extra)
    summary.update(batch_size=batch_size, global_batch=total, devices=devices)
    return resolved


def _print_schedule(cur: Curriculum, summary: dict) -> None:
    """The table ``etpp schedule`` prints (and the --measure report under it)."""
    batches = "global_batch" in summary
    click.echo(f"{cur.name}: budget E = {cur.budget:g} ({'full-resolution epochs of compute' if cur.split == 'compute' else 'data epochs'}), "
               f"R = {cur.resolution}, cost ~ (B/R)^{cur.alpha:g}")
    if batches:
        click.echo(f"global batch {summary['global_batch']} over {summary['devices']} device(s); batch: per device, "
                   "accum: micro-batches per optimiser step")
    header = f"{'stage':>5} {'band':>5} {'mag':>5} {'replay':>6} {'epochs':>7} {'epoch range':>13} {'compute':>8} {'cumul.':>7}"
    header += f" {'batch':>6} {'accum':>5}" if batches else ""
    click.echo(header)
    click.echo("-" * len(header))
    for row in summary["stages"]:
        rng = f"{row['start_epoch']}-{row['end_epoch'] - 1}" if row["epochs"] else "-"
        line = (f"{row['stage']:>5} {row['band']:>5} {row['magnitude']:>5g} {row['replay']:>6} "
                f"{row['epochs']:>7} {rng:>13} {row['compute_share']:>8.1%} {row['cumulative_compute']:>7.1%}")
        click.echo(line + (f" {row['batch']:>6} {row['accumulation']:>5}" if batches else ""))
    click.echo("-" * len(header))
    click.echo(f"data epochs {summary['data_epochs']}, compute {summary['total_compute']:.1f} full-res epochs, "
               f"relative compute {summary['relative_compute']:.3f} of a {summary['baseline_budget']:g}-epoch "
               f"baseline, speed-up {summary['speedup']:.2f}x")
    if "plot" in summary:
        click.echo(f"plot written to {summary['plot']}")
    if "measure" in summary:
        click.echo("")
        click.echo(summary["measure"]["text"])


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--classes", type=int, default=10, show_default=True)
@click.option("--train-per-class", type=int, default=100, show_default=True)
@click.option("--val-per-class", type=int, default=25, show_default=True)
@click.option("--size", type=int, default=72, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo_data(out_dir: str, classes: int, train_per_class: int, val_per_class: int, size: int, seed: int) -> None:
    """Write the deterministic demo ImageFolder (train/ and val/) to OUT_DIR."""
    from etpp_dali.data.demo import DemoSpec, write_demo_dataset
    from etpp_dali.data.scan import DataError

    spec = DemoSpec(classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                    size=size, seed=seed)
    try:
        path = write_demo_dataset(out_dir, spec)
    except DataError as exc:
        _fail(str(exc))
    click.echo(f"wrote {classes * (train_per_class + val_per_class)} images "
               f"({classes} classes, {size}x{size}) to {path}")


@main.command("check-data")
@click.argument("data_dir", type=click.Path())
@click.option("--no-cache", is_flag=True, help="Re-inspect every file instead of trusting the index.")
@click.option("--deep", is_flag=True, help="Decode every image fully (slow; finds damage inside JPEG data).")
@click.option("--problems", "problems_file", type=click.Path(dir_okay=False), default=None,
              help="Write the full list of problems here (default: a file in the cache folder).")
def check_data(data_dir: str, no_cache: bool, deep: bool, problems_file: str | None) -> None:
    """Report the files the pipeline will not decode, empty classes, and val-only classes: counts
    per reason, the first few, and the file with the full list.

    Exit status 0 when the data set is clean, 1 when there are problems. The data is never changed.
    """
    from etpp_dali.data.check import check_data as run_check
    from etpp_dali.data.scan import DataError

    try:
        status = run_check(data_dir, deep=deep, use_cache=not no_cache, problems_file=problems_file, echo=click.echo)
    except DataError as exc:
        _fail(str(exc))
    sys.exit(status)


def recipe_dirs() -> list[Path]:
    """Where named recipes live: a source checkout's pipelines/ (so an editable install or a
    PYTHONPATH run reads the files being edited), then the copy installed with the package
    (``etpp_dali.recipes``, package data of a wheel)."""
    from importlib import resources

    dirs = []
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.cfg").is_file() and (root / "pipelines").is_dir():
        dirs.append(root / "pipelines")
    try:
        installed = resources.files("etpp_dali.recipes")
    except ModuleNotFoundError:  # a checkout run straight from its folder
        installed = None
    if isinstance(installed, Path) and installed.is_dir() and installed.resolve() not in dirs:
        dirs.append(installed.resolve())
    return dirs


def find_recipe(name: str) -> Path:
    """A recipe file: ``name`` as a path, else a named recipe (``demo`` or ``demo.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in recipe_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")})
    _fail(f"--recipe {name!r}: no such file or recipe; installed recipes: {', '.join(known) or 'none found'} "
          "(or give a recipe file's path)")
    raise AssertionError


@main.command()
@click.option("--recipe", default=None, help="A recipe YAML (pipelines/) or its name; default: the demo recipe.")
@click.option("--data", default=None, help="ImageFolder root with train/ and val/ (default: the embedded demo set).")
@click.option("--val-split", type=float, default=None, help="Hold out this fraction of train when there is no val/.")
@click.option("--trust-data", is_flag=True, default=None,
              help="Index new files from their headers only (format, size), without the end-of-file check; "
                   "a file the decoder fails on is still left out at run time.")
@click.option("--model", default=None, help="Any timm model name.")
@click.option("--preset", default=None, help="etpp, et, baseline or a schedule file (a file keeps its own budget "
              "unless --budget is given: the recipe's budget belongs to the recipe's preset).")
@click.option("--family", type=click.Choice(sorted(FAMILIES)), default=None)
@click.option("--budget", type=float, default=None, help="Budget E (full-resolution epochs of compute).")
@click.option("--resolution", type=int, default=None, help="Full resolution R.")
@click.option("--baseline", is_flag=True, default=None, help="No curriculum: full size, m = 9, its own budget.")
@click.option("--baseline-budget", type=float, default=None, help="Epochs of the baseline (and what speed-ups are against).")
@click.option("--batch-size", type=int, default=None, help="Per-device batch at full resolution.")
@click.option("--global-batch", type=int, default=None,
              help="Images per optimiser step over all devices (default: batch size x devices).")
@click.option("--stage-batch", default=None,
              help="Per-device batch of each stage: auto (batch x (R/B)^2, dividing the global batch) or a "
                   "comma-separated list, one a stage (0: --batch-size); smaller batches accumulate gradients.")
@click.option("--echo", default=None,
              help="Reuse of decoded images: auto (measured per stage), off, or a factor N for every stage "
                   "(default: the schedule's replay factors).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: 4e-3 x batch / 4096).")
@click.option("--warmup-epochs", type=float, default=None, help="Warm-up in full-resolution epochs of compute.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--amp", type=click.Choice(["bf16", "fp16", "off"]), default=None)
@click.option("--channels-last", is_flag=True, default=None)
@click.option("--ema", is_flag=True, default=None, help="Keep and evaluate an EMA of the weights.")
@click.option("--mixup", type=float, default=None)
@click.option("--cutmix", type=float, default=None)
@click.option("--smoothing", type=float, default=None)
@click.option("--drop-path", type=float, default=None, help="Drop-path rate at E = 200 (scaled by E/200).")
@click.option("--clip-grad", type=float, default=None)
@click.option("--lowpass", type=click.Choice(["fourier", "resize"]), default=None)
@click.option("--output", default=None, help="Run folder (default: runs/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last checkpoint.")
@click.option("--seed", type=int, default=None)
@click.option("--val-every", type=int, default=None, help="Evaluate every N epochs (and at the end).")
@click.option("--threads", type=int, default=None, help="Data and torch threads per process.")
@click.option("--nproc", type=int, default=None, help="Run N processes with DDP (torchrun).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--tensorboard", is_flag=True, default=None, help="Also log scalars for TensorBoard (pip install tensorboard).")
def train(recipe, resume, nproc, no_progress, baseline, channels_last, ema, tensorboard, **flags) -> None:
    """Train a timm model with the EfficientTrain++ curriculum (the demo when given nothing)."""
    import os

    from etpp_dali.train.distributed import init_from_env
    from etpp_dali.train.trainer import RecipeError, TrainConfig, load_recipe
    from etpp_dali.train.trainer import train as run_training

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        import subprocess

        args = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
        if "--nproc" in sys.argv:
            i = sys.argv.index("--nproc")
            args = sys.argv[1:i] + sys.argv[i + 2:]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "etpp_dali", *args]
        sys.exit(subprocess.call(cmd))
    try:
        values = load_recipe(find_recipe(recipe or "demo")) if (recipe or not flags.get("data")) else {}
        if not recipe and flags.get("data"):
            values["name"] = Path(flags["data"]).name or "run"
        if _is_schedule_file(flags.get("preset")) and flags.get("budget") is None:
            values.pop("budget", None)  # the recipe's budget is its own preset's: the file's governs
        values.update({key: value for key, value in flags.items() if value is not None})  # flags are named as the fields
        if flags.get("stage_batch") is not None:
            values["stage_batch"] = _stage_batch_option(flags["stage_batch"])
        if flags.get("echo") is not None:
            values["echo"] = _echo_option(flags["echo"])
        for name, value in (("baseline", baseline), ("channels_last", channels_last), ("ema", ema),
                            ("tensorboard", tensorboard)):
            if value:
                values[name] = True
        if no_progress:
            values["progress"] = False
        values.setdefault("output", str(Path("runs") / values.get("name", "run")))
        cfg = TrainConfig(**values)
        out = Path(cfg.output)
        if not resume and (out / "last.pt").exists():
            _fail(f"--output {out} holds a run already; pass --resume to continue it or choose another --output")
        init_from_env()
        summary = run_training(cfg, resume=str(out) if resume else None)
    except RecipeError as exc:
        _fail(str(exc))
    except TypeError as exc:  # an unknown TrainConfig key that slipped past the recipe check
        _fail(f"bad setting: {exc}")
    _print_summary(summary)


def _is_schedule_file(preset: str | None) -> bool:
    from etpp_dali.curriculum.presets import PRESETS

    return preset is not None and preset not in PRESETS and Path(preset).is_file()


def _print_summary(s: dict) -> None:
    from etpp_dali.bench.record import markdown_table
    from etpp_dali.train.distributed import is_rank0

    if not s or not is_rank0():
        return
    click.echo("")
    click.echo(markdown_table(s["stages"], ["stage", "band", "magnitude", "batch", "accumulation", "echo", "epochs", "done",
                                           "wall_s", "images_per_s"]))
    top = f"top-1 {s['top1']:.1f}%, top-5 {s['top5']:.1f}%" if s.get("top1") is not None else "not evaluated"
    if s.get("ema_top1") is not None:
        top += f" (EMA top-1 {s['ema_top1']:.1f}%)"
    click.echo(f"\n{s['model']} on {s['schedule']}: {s['epochs_done']}/{s['epochs']} epochs in {s['wall_s']:.0f} s; {top}")
    click.echo(f"compute: {s['relative_compute']:.3f} of the {s['baseline_budget']:g}-epoch baseline "
               f"({s['compute_saved']:.0%} saved)")
    if s.get("estimated_baseline_wall_s"):
        click.echo(f"wall-clock: {s['wall_s']:.0f} s against about {s['estimated_baseline_wall_s']:.0f} s estimated for "
                   f"the baseline from the full-resolution epochs here ({s['wall_saved']:.0%} saved)")
    if s.get("interrupted"):
        click.echo(f"interrupted: continue with etpp train --resume --output {s['output']}")
    click.echo(f"run folder: {s['output']} (metrics.jsonl, curves.png, summary.json, last.pt)")


def _stage_batch_option(text: str) -> str | list[int]:
    """``--stage-batch``: ``auto`` or a comma-separated list of per-device batches (0 allowed)."""
    if text.strip() == "auto":
        return "auto"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        _fail(f"--stage-batch {text!r}: give auto or per-device batches, one a stage, e.g. 256,256,128,64 "
              "(0: --batch-size)")
    return values


def _echo_option(text: str) -> str | int:
    """``--echo``: auto, off or a whole factor N >= 1."""
    if text in ("auto", "off"):
        return text
    if not text.isdigit() or int(text) < 1:
        _fail(f"--echo {text!r}: use auto, off or a whole factor N >= 1")
    return int(text)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 96,160,224")
    if not values or any(v < 1 for v in values):
        _fail(f"{flag} {text!r} needs positive integers, e.g. 96,160,224")
    return values


def _check_device(device: str) -> None:
    """The loader's own device check, as a one-line CLI error (--device auto is not taken here)."""
    from etpp_dali.util.devices import resolve_device

    if device == "auto":
        _fail("--device auto: name the device to measure, cpu or cuda")
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        _fail(f"--device {device}: {exc}")


def _emit(doc: dict, json_path: str | None, table: str) -> None:
    """Print the Markdown table; with --json also write the JSON and the table beside it (.md)."""
    from etpp_dali.bench.record import write_results

    write_results(doc, json_path)
    click.echo(table)
    if json_path:
        md = Path(json_path).with_suffix(".md")
        md.write_text(f"{doc.get('benchmark', 'benchmark')} ({json_path})\n\n{table}\n")
        click.echo(f"results written to {json_path} and {md}")


@main.group()
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
def bench_op_cmd(device, backends, bands, input_size, batch_size, layout, dtype, threads, json_path):
    """The Fourier crop alone: images/sec per backend and band (and against a copy on CUDA)."""
    from etpp_dali.bench.record import bench_op, markdown_table

    backend_list = [b.strip() for b in backends.split(",") if b.strip()]
    for b in backend_list:
        if b not in ("matmul", "fft"):
            _fail(f"--backends: {b!r} is unknown; use matmul and/or fft")
    _check_device(device)
    rows = bench_op(device=device, backends=backend_list, input_size=input_size,
                    bands=_int_list(bands, "--bands"), batch=batch_size, layout=layout, dtype=dtype,
                    threads=threads)
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
def bench_crop_cmd(data_dir, bands, resolution, batch_size, threads, rounds, json_path):
    """Decode, random crop, flip, then the exact crop vs the resize to B, in one DALI CPU run."""
    from etpp_dali.bench.record import bench_crop_pipeline, markdown_table
    from etpp_dali.data.scan import DataError, scan_dataset

    try:
        scan = scan_dataset(data_dir)
    except DataError as exc:
        _fail(str(exc))
    files = [r.path for r in scan.train.records]
    rows = bench_crop_pipeline(files, bands=_int_list(bands, "--bands"), batch=batch_size, threads=threads,
                               resolution=resolution, rounds=rounds)
    table = markdown_table(rows, ["band", "resolution", "batch", "threads", "images_per_s", "ratio_vs_resize"])
    _emit({"benchmark": "crop", "data": str(data_dir), "images": len(files), "rows": rows}, json_path, table)


@bench.command("loader")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="ImageFolder root (train/ inside or classes) or a .txt file list.")
@click.option("--bands", default="96,160,224", show_default=True)
@click.option("--magnitude", type=float, default=9.0, show_default=True, help="RandAugment magnitude (whole number, 0-10).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="DALI threads = DataLoader workers.")
@click.option("--resolution", type=int, default=224, show_default=True)
@click.option("--loaders", default=",".join(DEFAULT_LOADERS), show_default=True, help="Which loaders to time.")
@click.option("--breakdown", is_flag=True, help="Also time our graph cut after each stage (where the time goes).")
@click.option("--rounds", type=int, default=2, show_default=True, help="Windows per loader and band, in alternating order.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Warm-up batches beyond the loader's prefetch depth.")
@click.option("--min-batches", type=int, default=10, show_default=True, help="Each window times at least this many batches...")
@click.option("--min-seconds", type=float, default=3.0, show_default=True, help="...and at least this many seconds.")
@click.option("--files", type=int, default=2000, show_default=True, help="Images sampled from the data set (once).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: the mixed decoder for every DALI loader.")
@click.option("--time-limit", type=float, default=None, help="Start no window past this many seconds; write what was measured.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="PNG of images/sec and ratios per band.")
def bench_loader_cmd(data_dir, bands, magnitude, batch_size, threads, resolution, loaders, breakdown, rounds, warmup,
                     min_batches, min_seconds, files, device, time_limit, json_path, plot):
    """Images/sec of our loader and the loaders a user would pick instead, each timed alone in its
    own process, in rounds of alternating order: median and range per loader and band."""
    from etpp_dali.bench.loader import BenchError, LoaderBenchSettings, bench_loader
    from etpp_dali.bench.report import loader_tables

    settings = LoaderBenchSettings(
        bands=_int_list(bands, "--bands"), magnitude=magnitude, batch=batch_size, threads=threads,
        resolution=resolution, rounds=rounds, warmup=warmup, min_batches=min_batches, min_seconds=min_seconds,
        files=files, device=device, loaders=[n.strip() for n in loaders.split(",") if n.strip()], breakdown=breakdown,
        time_limit=time_limit)
    try:
        settings.validate()
        if device == "cuda":
            _check_device(device)
        doc = bench_loader(data_dir, settings, log=lambda line: click.echo(line, err=True))
    except BenchError as exc:
        _fail(str(exc))
    if plot:
        from etpp_dali.bench.report import plot_loader_bench

        plot_loader_bench(doc, plot)
    _emit({"benchmark": "loader", **doc}, json_path, loader_tables(doc))
    if doc["errors"] or doc["isolation"]["violations"]:  # the results are written; the status says not all is well
        click.echo(f"{len(doc['errors'])} window(s) failed, {len(doc['isolation']['violations'])} isolation "
                   "violation(s); the other figures are written", err=True)
        sys.exit(1)


@bench.command("train")
@click.option("--data", default=None, help="ImageFolder root with train/ and val/ (default: the recipe's, the demo set).")
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
def bench_train_cmd(data, recipe, model, budget, baseline_budget, resolution, batch_size, device, seed, val_every,
                    output, json_path, plot):
    """ET++ against the baseline with the same trainer, seed and evaluation schedule: top-1 against
    training wall-clock, the speed-ups, and per stage the images/sec and the loader's share."""
    from etpp_dali.bench.train import bench_train
    from etpp_dali.train.trainer import RecipeError, TrainConfig, load_recipe

    if data is not None and not Path(data).is_dir():
        _fail(f"--data {data}: no such folder; give an ImageFolder root with train/ and val/")
    if val_every < 1:
        _fail(f"--val-every {val_every}: must be >= 1")
    out = Path(output)
    if any(out.glob("*/last.pt")):
        _fail(f"--output {out} holds runs already; choose another folder")
    try:
        values = load_recipe(find_recipe(recipe))
        for key, value in (("data", data), ("model", model), ("budget", budget), ("baseline_budget", baseline_budget),
                           ("resolution", resolution), ("batch_size", batch_size), ("device", device)):
            if value is not None:
                values[key] = value
        values.update(seed=seed, progress=False)
        doc = bench_train(TrainConfig(**values), out, val_every=val_every)
    except RecipeError as exc:
        _fail(str(exc))
    if plot:
        from etpp_dali.util.plots import plot_curves

        plot_curves(doc["curves"], plot, "training wall-clock (min; evaluation excluded)", "val top-1 (%)",
                    "ET++ against the baseline")
    _emit({"benchmark": "train", **doc}, json_path, _train_table(doc))


def _train_table(doc: dict) -> str:
    from etpp_dali.bench.record import markdown_table

    table = markdown_table(doc["runs"], ["run", "schedule", "epochs", "train_s", "outside_training_s", "images_seen",
                                         "top1", "relative_compute", "time_to_baseline_top1_s"])
    stages = "\n".join(f"{r['run']}: " + ", ".join(
        f"B={s['band']} r={s.get('echo') or 1} {s['images_per_s'] or 0:.0f} img/s, loader {s['loader_share'] or 0:.0%}"
        for s in r["stages"])
        for r in doc["runs"])
    return (f"{table}\n\nwall-clock speed-up {doc['wall_speedup']}x, compute {doc['compute_speedup']}x, time to the "
            f"baseline's final top-1 ({doc['baseline_final_top1']}) {doc['time_to_accuracy_speedup']}x\n"
            f"per stage: echo factor r, images/sec and the loader's share of the step time (waiting for data)\n{stages}")


_SEARCH_FLAGS = ("data", "val_split", "model", "resolution", "baseline_budget", "batch_size", "device", "seed",
                 "threads")


@main.command()
@click.option("--recipe", default=None, help="Recipe for the training settings (default: the demo recipe, "
              "or TrainConfig's defaults with --data).")
@click.option("--model", default=None, help="Any timm model name.")
@click.option("--data", default=None, help="ImageFolder root with train/ and val/ (default: the demo set).")
@click.option("--val-split", type=float, default=None, help="Hold out this fraction of train when there is no val/.")
@click.option("--budget", type=float, default=None, help="Budget E in full-resolution epochs of compute "
              "(default: the recipe's, else 200).")
@click.option("--wall-clock-budget", type=float, default=None,
              help="Budget in seconds on this machine instead (uses the per-band times measured here).")
@click.option("--resolution", type=int, default=None, help="Full resolution R.")
@click.option("--baseline-budget", type=float, default=None, help="Epochs of the baseline (for the speed-ups).")
@click.option("--stages", type=int, default=10, show_default=True)
@click.option("--candidates", default=None, help="Bands to try, in pixels at R (default: 96,128,160,192,224 "
              "scaled to R).")
@click.option("--proxy-fraction", type=float, default=0.5, show_default=True,
              help="Share of the training set (and so of each run's cost) the proxy trains on.")
@click.option("--proxy-seeds", type=int, default=2, show_default=True,
              help="Proxy runs (seeds) averaged per schedule: each seed costs one more run a schedule and "
              "lowers the run-to-run noise of the proxy top-1.")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Points of proxy top-1 a smaller band may lose against full resolution.")
@click.option("--batch-size", type=int, default=None, help="Global batch size per step.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=None, help="Data and torch threads.")
@click.option("--output", default="runs/search", show_default=True,
              help="Folder for the schedule, the trials and the cached proxy runs (rerun to resume).")
@click.option("--dry-run", is_flag=True, help="Print the proxy cost and stop.")
def search(recipe, budget, wall_clock_budget, stages, candidates, proxy_fraction, proxy_seeds, tolerance, output,
           dry_run, **flags) -> None:
    """Search the bands of a schedule stage by stage with short proxy trainings; write a schedule
    file that `etpp train --preset FILE` takes."""
    from etpp_dali.search.core import SearchError, SearchSpace, run_search
    from etpp_dali.search.proxy import SearchInterrupted
    from etpp_dali.train.trainer import RecipeError, TrainConfig, load_recipe

    try:
        values = load_recipe(find_recipe(recipe or "demo")) if (recipe or not flags.get("data")) else {}
        values.update({k: v for k, v in flags.items() if v is not None})
        cfg = TrainConfig(**values)
        cfg.validate()
        space = SearchSpace.create(resolution=cfg.resolution, stages=stages, tolerance=tolerance,
                                   candidates=_int_list(candidates, "--candidates") if candidates else None)
        train_args = (["--recipe", recipe] if recipe else []) + [
            f"--{k.replace('_', '-')} {flags[k]}" for k in _SEARCH_FLAGS if flags.get(k) is not None]
        result = run_search(cfg, space, output=output, budget=budget, wall_clock_budget=wall_clock_budget,
                            proxy_fraction=proxy_fraction, proxy_seeds=proxy_seeds, dry_run=dry_run,
                            train_args=train_args, log=click.echo)
    except (SearchError, RecipeError, ScheduleError) as exc:
        _fail(str(exc))
    except SearchInterrupted as exc:
        click.echo(f"etpp: {exc}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("etpp: interrupted; run the same command again to resume the search", err=True)
        sys.exit(130)
    if result.get("dry_run"):
        return
    click.echo("")
    click.echo(result["table"])
    click.echo(f"\nchosen bands {', '.join(map(str, result['bands']))}: proxy top-1 {result['top1']:.2f}% "
               f"(all at full resolution {result['reference_top1']:.2f}%)")
    click.echo(f"schedule: {result['schedule_file']}; trials: {result['trials_file']}; plot: {result['plot']}")
    click.echo(f"train it: {result['command']}")


if __name__ == "__main__":  # pragma: no cover
    main()
