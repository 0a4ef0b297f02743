"""``etpp train``: the flags over a recipe (:func:`etpp_dali.train.config.merge_recipe`), then one
run (:func:`etpp_dali.train.trainer.start_run`), relaunched under torchrun for ``--nproc N``."""

from __future__ import annotations

import sys
from typing import Any

import click

from etpp_dali.cli.options import command_line, echo_option, fail, stage_batch_option
from etpp_dali.curriculum.presets import FAMILIES

__all__ = ["print_summary", "train"]


@click.command()
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
@click.option("--baseline-budget", type=float, default=None,
              help="Epochs of the baseline (and what speed-ups are against).")
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
@click.option("--tensorboard", is_flag=True, default=None,
              help="Also log scalars for TensorBoard (pip install tensorboard).")
@click.option("--init-from", default=None,
              help="Start from the encoder of a checkpoint of this project (RUN/last.pt of an MAE pre-training): "
                   "the decoder is dropped, the head is new; the model is the checkpoint's unless --model is given.")
@click.option("--linear-probe", is_flag=True, default=None, help="With --init-from: train the head only.")
@click.pass_context
def train(ctx: click.Context, recipe: str | None, resume: bool, nproc: int | None, no_progress: bool,
          stage_batch: str | None, echo: str | None, **flags: Any) -> None:
    """Train a timm model with the EfficientTrain++ curriculum (the demo when given nothing)."""
    from etpp_dali.train.config import (
        RecipeError,  # torch, timm and DALI load only once a run starts
        merge_recipe,
    )
    from etpp_dali.train.distributed import needs_launch, run_under_torchrun
    from etpp_dali.train.finetune import checkpoint_architecture
    from etpp_dali.train.trainer import start_run

    child_args = command_line(ctx.params, ctx.command, [p.name for p in ctx.command.params if p.name != "nproc"])
    flags.update(stage_batch=None if stage_batch is None else stage_batch_option(stage_batch),
                 echo=None if echo is None else echo_option(echo), progress=False if no_progress else None)
    if needs_launch(nproc):
        sys.exit(run_under_torchrun(nproc, child_args))
    try:
        if flags.get("init_from") and flags.get("model") is None:
            flags.update(checkpoint_architecture(flags["init_from"]))  # the encoder's model and patch size
        summary = start_run(merge_recipe(recipe, flags), resume=resume)
    except RecipeError as exc:
        fail(str(exc))
    print_summary(summary)


def print_summary(s: dict[str, Any]) -> None:
    """The end of ``etpp train``: the stages' table, accuracy, compute and wall-clock saved (rank 0)."""
    from etpp_dali.bench.record import markdown_table
    from etpp_dali.train.distributed import is_rank0

    if not s or not is_rank0():
        return
    click.echo("")
    click.echo(markdown_table(s["stages"], ["stage", "band", "magnitude", "batch", "accumulation", "echo", "epochs",
                                           "done", "wall_s", "images_per_s"]))
    top = f"top-1 {s['top1']:.1f}%, top-5 {s['top5']:.1f}%" if s.get("top1") is not None else "not evaluated"
    if s.get("knn_top1") is not None:
        top = f"k-NN top-1 {s['knn_top1']:.1f}%"
    if s.get("ema_top1") is not None:
        top += f" (EMA top-1 {s['ema_top1']:.1f}%)"
    click.echo(f"\n{s['model']} on {s['schedule']}: {s['epochs_done']}/{s['epochs']} epochs in {s['wall_s']:.0f} s; "
               f"{top}")
    click.echo(f"compute: {s['relative_compute']:.3f} of the {s['baseline_budget']:g}-epoch baseline "
               f"({s['compute_saved']:.0%} saved)")
    if s.get("estimated_baseline_wall_s"):
        click.echo(f"wall-clock: {s['wall_s']:.0f} s against about {s['estimated_baseline_wall_s']:.0f} s estimated "
                   f"for the baseline from the full-resolution epochs here ({s['wall_saved']:.0%} saved)")
    if s.get("interrupted"):
        click.echo(f"interrupted: continue with etpp train --resume --output {s['output']}")
    click.echo(f"run folder: {s['output']} (metrics.jsonl, curves.png, summary.json, last.pt)")
