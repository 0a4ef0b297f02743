"""The ``etpp`` command line: the click group :func:`main` and its commands, one module a family
(:mod:`.schedule`, :mod:`.data`, :mod:`.train`, :mod:`.bench`, :mod:`.search`) over the flag
parsers they share (:mod:`.options`).

Each command parses its flags and calls one function of the wing it belongs to, importing that
wing inside the command: ``etpp --help`` stays fast and ``etpp schedule`` imports neither torch
nor DALI.
"""

from __future__ import annotations

import click

from etpp_dali import __version__
from etpp_dali.cli import bench, data, schedule, search, train

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="etpp")
def main() -> None:
    """EfficientTrain++ curriculum training on an NVIDIA DALI data pipeline."""


for _command in (schedule.schedule, data.demo_data, data.check_data, train.train, bench.bench, search.search):
    main.add_command(_command)
