"""``etpp schedule``: print a curriculum, its stage batches and (with --measure) its predicted
wall-clock. Without --measure it imports neither torch nor DALI."""

from __future__ import annotations

import json

import click

from etpp_dali.cli.options import fail, stage_batch_option
from etpp_dali.curriculum.batching import BatchError, global_batch_size, resolve_stage_batches, stage_batch_rows
from etpp_dali.curriculum.patches import MAE_MASK_RATIO, mae_curriculum, token_table
from etpp_dali.curriculum.presets import FAMILIES, PRESETS
from etpp_dali.curriculum.schedule import Curriculum, ScheduleError

__all__ = ["schedule"]

MEASURE_BATCH = 64  # the batch `etpp schedule --measure` times at without --batch-size


@click.command()
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
                   f"(and the batch --measure times at; default {MEASURE_BATCH}).")
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
@click.option("--mae-patch", type=int, default=None,
              help="The MAE schedule of a ViT with this patch size: bands on its grid, no RandAugment, and each "
                   "stage's tokens and the encoder's visible tokens.")
@click.option("--mask-ratio", type=float, default=MAE_MASK_RATIO, show_default=True, help="With --mae-patch.")
def schedule(preset: str, family: str, budget: float | None, resolution: int | None, replay: bool,
             batch_size: int | None, global_batch: int | None, stage_batch: str | None, devices: int,
             as_json: bool, plot: str | None, measure: bool, model: str | None, device: str, data: str | None,
             baseline_budget: float | None, mae_patch: int | None, mask_ratio: float) -> None:
    """Print a curriculum: per stage its band, magnitude, replay, data epochs (and with
    --batch-size its per-device batch and gradient accumulation); then the totals. With
    --measure, also the wall-clock predicted from timings on this machine."""
    try:
        cur = Curriculum.resolve(preset, family=family, budget=budget, resolution=resolution, replay=replay,
                                 baseline_budget=baseline_budget)
        cur = mae_curriculum(cur, mae_patch) if mae_patch is not None else cur
    except ScheduleError as exc:
        fail(str(exc))
    summary = cur.summary(baseline_budget)
    if mae_patch is not None:
        if not 0.0 < mask_ratio < 1.0:
            fail(f"--mask-ratio {mask_ratio}: must be between 0 and 1 (MAE: 0.75)")
        for row, tokens in zip(summary["stages"], token_table(cur, mae_patch, mask_ratio)):
            row.update(tokens=tokens["tokens"], visible=tokens["visible"], step_cost=tokens["step_cost"])
        summary.update(mae_patch=mae_patch, mask_ratio=mask_ratio)
    if batch_size is not None:
        cur = _add_stage_batches(summary, cur, batch_size, global_batch, stage_batch, devices)
    elif global_batch is not None or stage_batch is not None:
        fail("--global-batch and --stage-batch need --batch-size (the per-device batch at full resolution)")
    if measure:
        summary["measure"] = _measure(cur, model, data, batch_size or MEASURE_BATCH, device, baseline_budget)
    if plot:
        from etpp_dali.util.plots import plot_schedule

        summary["plot"] = str(plot_schedule(cur, plot))
    if as_json:
        if measure:
            summary["measure"].pop("text")
        click.echo(json.dumps(summary, indent=2))
        return
    _print_schedule(cur, summary)


def _measure(cur: Curriculum, model: str | None, data: str | None, batch: int, device: str,
             baseline_budget: float | None) -> dict:
    """--measure: each stage timed at its own batch (the schedule's, or the --stage-batch ones)."""
    from etpp_dali.train.measure import MeasureError, measure_schedule  # torch and DALI: only with --measure

    try:
        return measure_schedule(cur, model=model, data=data, batch=batch, device=device,
                                baseline_budget=baseline_budget)
    except MeasureError as exc:
        fail(str(exc))


def _add_stage_batches(summary: dict, cur: Curriculum, batch_size: int, global_batch: int | None,
                       stage_batch: str | None, devices: int) -> Curriculum:
    """Resolve the stages' batches as a run would, add them (and the accumulation) to the rows,
    and return the schedule with them."""
    for flag, value in (("--batch-size", batch_size), ("--global-batch", global_batch), ("--devices", devices)):
        if value is not None and value < 1:
            fail(f"{flag} {value}: must be >= 1")
    rule = None if stage_batch is None else stage_batch_option(stage_batch)
    try:
        resolved = resolve_stage_batches(cur, batch_size=batch_size, global_batch=global_batch, world=devices,
                                         stage_batch=rule)
    except (BatchError, ScheduleError) as exc:
        fail(str(exc))
    total = global_batch_size(batch_size, global_batch, devices)
    for row, extra in zip(summary["stages"], stage_batch_rows(resolved, batch_size, total, devices)):
        row.update(extra)
    summary.update(batch_size=batch_size, global_batch=total, devices=devices)
    return resolved


def _extra_columns(summary: dict) -> list[tuple[str, int, str, str]]:
    """The columns after the fixed ones: (title, width, row key, format) of the stage batches
    (with --batch-size) and of the MAE tokens (with --mae-patch)."""
    columns = []
    if "global_batch" in summary:
        columns += [("batch", 6, "batch", ""), ("accum", 5, "accumulation", "")]
    if "mae_patch" in summary:
        columns += [("tokens", 6, "tokens", ""), ("visible", 7, "visible", ""), ("cost", 6, "step_cost", ".3f")]
    return columns


def _print_schedule(cur: Curriculum, summary: dict) -> None:
    """The table ``etpp schedule`` prints (and the --measure report under it)."""
    batches = "global_batch" in summary
    unit = "full-resolution epochs of compute" if cur.split == "compute" else "data epochs"
    click.echo(f"{cur.name}: budget E = {cur.budget:g} ({unit}), R = {cur.resolution}, cost ~ (B/R)^{cur.alpha:g}")
    if "mae_patch" in summary:
        click.echo(f"MAE: {summary['mae_patch']}-px patches, tokens (B/{summary['mae_patch']})^2 a stage, the encoder "
                   f"sees {1 - summary['mask_ratio']:.0%} of them; cost: a step against a full-resolution one")
    if batches:
        click.echo(f"global batch {summary['global_batch']} over {summary['devices']} device(s); batch: per device, "
                   "accum: micro-batches per optimiser step")
    header = (f"{'stage':>5} {'band':>5} {'mag':>5} {'replay':>6} {'epochs':>7} {'epoch range':>13} {'compute':>8} "
              f"{'cumul.':>7}")
    extra = _extra_columns(summary)
    header += "".join(f" {title:>{width}}" for title, width, _, _ in extra)
    click.echo(header)
    click.echo("-" * len(header))
    for row in summary["stages"]:
        rng = f"{row['start_epoch']}-{row['end_epoch'] - 1}" if row["epochs"] else "-"
        line = (f"{row['stage']:>5} {row['band']:>5} {row['magnitude']:>5g} {row['replay']:>6} "
                f"{row['epochs']:>7} {rng:>13} {row['compute_share']:>8.1%} {row['cumulative_compute']:>7.1%}")
        click.echo(line + "".join(f" {format(row[key], spec):>{width}}" for _, width, key, spec in extra))
    click.echo("-" * len(header))
    click.echo(f"data epochs {summary['data_epochs']}, compute {summary['total_compute']:.1f} full-res epochs, "
               f"relative compute {summary['relative_compute']:.3f} of a {summary['baseline_budget']:g}-epoch "
               f"baseline, speed-up {summary['speedup']:.2f}x")
    if "plot" in summary:
        click.echo(f"plot written to {summary['plot']}")
    if "measure" in summary:
        click.echo("")
        click.echo(summary["measure"]["text"])
