"""The data commands: ``etpp demo-data`` writes the demo set, ``etpp check-data`` lists what the
pipeline would not decode."""

from __future__ import annotations

import sys

import click

from etpp_dali.cli.options import fail

__all__ = ["check_data", "demo_data"]


@click.command("demo-data")
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
        fail(str(exc))
    click.echo(f"wrote {classes * (train_per_class + val_per_class)} images "
               f"({classes} classes, {size}x{size}) to {path}")


@click.command("check-data")
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
        fail(str(exc))
    sys.exit(status)
