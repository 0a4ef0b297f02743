"""The data commands: ``etpp demo-data`` writes the demo set, ``etpp check-data`` lists what the
pipeline would not decode."""

from __future__ import annotations

import sys
from pathlib import Path

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
@click.option("--no-cache", is_flag=True, help="Re-inspect every file instead of trusting the scan cache.")
@click.option("--deep", is_flag=True, help="Decode every image fully (slow; finds damage inside JPEG data).")
def check_data(data_dir: str, no_cache: bool, deep: bool) -> None:
    """Report every file the pipeline will not decode, empty classes, and val-only classes.

    Exit status 0 when the data set is clean, 1 with the list of problems otherwise. The data
    is never changed.
    """
    from etpp_dali.data.scan import DataError, scan_dataset

    try:
        scan = scan_dataset(data_dir, use_cache=not no_cache, deep=deep)
    except DataError as exc:
        fail(str(exc))
    splits = [("train" if scan.val is not None or (Path(data_dir) / "train").is_dir() else ".", scan.train)]
    if scan.val is not None:
        splits.append(("val", scan.val))
    for name, split in splits:
        click.echo(f"{name}: {len(split)} images in {len(split.classes)} classes, {len(split.bad)} bad files")
    problems = scan.problems()
    if not problems:
        click.echo("clean: every file decodes")
        return
    click.echo(f"{len(problems)} problem(s):")
    for p in problems:
        click.echo(f"  {p}")
    sys.exit(1)
