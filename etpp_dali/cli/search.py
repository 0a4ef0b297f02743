"""``etpp search``: the bands of a schedule, found stage by stage with short proxy trainings; it
writes a schedule file that ``etpp train --preset FILE`` takes."""

from __future__ import annotations

import sys
from typing import Any

import click

from etpp_dali.cli.options import command_line, fail, int_list

__all__ = ["search"]

# the search flags that are `etpp train` flags too: the printed train command repeats them
TRAIN_FLAGS = ("recipe", "data", "val_split", "model", "resolution", "baseline_budget", "batch_size", "device", "seed",
               "threads")


@click.command()
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
@click.option("--proxy-fraction", type=float, default=0.25, show_default=True,
              help="Share of the training set (and so of each run's cost) the proxy trains on.")
@click.option("--proxy-seeds", type=int, default=2, show_default=True,
              help="Proxy runs (seeds) averaged per schedule: each seed costs one more run a schedule and "
              "lowers the run-to-run noise of the proxy top-1.")
@click.option("--tolerance", type=float, default=0.5, show_default=True,
              help="Points of proxy top-1 a smaller band may lose against full resolution.")
@click.option("--score-after", type=click.IntRange(min=0), default=1, show_default=True,
              help="Score a stage's candidates and its reference this many stages after it, at equal compute "
              "(--stages or more: at the end of the budget).")
@click.option("--proxy-val-images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="At most this many validation images score the proxy (a fixed class-balanced draw).")
@click.option("--batch-size", type=int, default=None, help="Global batch size per step.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=None, help="Data and torch threads.")
@click.option("--output", default="runs/search", show_default=True,
              help="Folder for the schedule, the trials and the cached proxy runs (rerun to resume).")
@click.option("--dry-run", is_flag=True, help="Print the proxy cost and stop.")
@click.pass_context
def search(ctx: click.Context, recipe: str | None, budget: float | None, wall_clock_budget: float | None, stages: int,
           candidates: str | None, proxy_fraction: float, proxy_seeds: int, tolerance: float, score_after: int,
           proxy_val_images: int, output: str, dry_run: bool, **flags: Any) -> None:
    """Search the bands of a schedule stage by stage with short proxy trainings; write a schedule
    file that `etpp train --preset FILE` takes."""
    from etpp_dali.curriculum.schedule import ScheduleError
    from etpp_dali.search import SearchError, SearchSpace, run_search
    from etpp_dali.search.proxy import SearchInterrupted
    from etpp_dali.train.config import RecipeError, merge_recipe

    bands = int_list(candidates, "--candidates") if candidates else None
    try:
        cfg = merge_recipe(recipe, flags)
        space = SearchSpace.create(resolution=cfg.resolution, stages=stages, tolerance=tolerance, candidates=bands)
        result = run_search(cfg, space, output=output, budget=budget, wall_clock_budget=wall_clock_budget,
                            proxy_fraction=proxy_fraction, proxy_seeds=proxy_seeds, score_after=score_after,
                            val_images=proxy_val_images, dry_run=dry_run,
                            train_args=command_line(ctx.params, ctx.command, TRAIN_FLAGS), log=click.echo)
    except (SearchError, RecipeError, ScheduleError) as exc:
        fail(str(exc))
    except SearchInterrupted as exc:
        click.echo(f"etpp: {exc}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("etpp: interrupted; run the same command again to resume the search", err=True)
        sys.exit(130)
    if not result.get("dry_run"):
        _print_result(result)


def _print_result(result: dict[str, Any]) -> None:
    click.echo("")
    click.echo(result["table"])
    click.echo(f"\nchosen bands {', '.join(map(str, result['bands']))}: proxy top-1 {result['top1']:.2f}% at the end "
               f"of stage {result['scored_at']} (all at full resolution {result['reference_top1']:.2f}% at the end of "
               f"stage {result['trials'][0]['scored_at']})")
    click.echo(result["plan"]["spent"]["text"])
    click.echo(f"schedule: {result['schedule_file']}; trials: {result['trials_file']}; plot: {result['plot']}")
    click.echo(f"train it: {result['command']}")
