"""The flag parsers the ``etpp`` commands share, and the one-line error they all give.

Nothing here imports torch or DALI: these run before a command decides which wing it needs.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NoReturn

import click

__all__ = ["check_device", "command_line", "echo_option", "fail", "int_list", "stage_batch_option"]


def fail(message: str) -> NoReturn:
    """One clear line on stderr and a non-zero exit status, as click gives for usage errors."""
    raise click.ClickException(message)


def int_list(text: str, flag: str) -> list[int]:
    """A comma-separated list of positive integers given to ``flag`` (``96,160,224``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 96,160,224")
    if not values or any(v < 1 for v in values):
        fail(f"{flag} {text!r} needs positive integers, e.g. 96,160,224")
    return values


def stage_batch_option(text: str) -> str | list[int]:
    """``--stage-batch``: ``auto`` or a comma-separated list of per-device batches (0 allowed)."""
    if text.strip() == "auto":
        return "auto"
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        fail(f"--stage-batch {text!r}: give auto or per-device batches, one a stage, e.g. 256,256,128,64 "
             "(0: --batch-size)")
    return values


def echo_option(text: str) -> str | int:
    """``--echo``: auto, off or a whole factor N >= 1."""
    if text in ("auto", "off"):
        return text
    if not text.isdigit() or int(text) < 1:
        fail(f"--echo {text!r}: use auto, off or a whole factor N >= 1")
    return int(text)


def check_device(device: str) -> None:
    """``--device`` of a benchmark, checked as the loader would check it, as a one-line error
    (a benchmark names its device: ``auto`` is not taken)."""
    from etpp_dali.util.devices import resolve_device  # torch: only the commands that measure need it

    if device == "auto":
        fail("--device auto: name the device to measure, cpu or cuda")
    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        fail(f"--device {device}: {exc}")


def command_line(params: Mapping[str, Any], command: click.Command, names: Iterable[str] | None = None) -> list[str]:
    """The flags that give ``params`` (click's parsed values of ``command``) again: ``--flag
    value`` for each option that is set (not None), ``--flag`` alone for each boolean flag that
    is on. ``names`` picks the options, in that order (default: all, in the command's order).
    A value is written as ``str`` writes it, which the option's type parses back to itself."""
    options = {p.name: p for p in command.params if isinstance(p, click.Option)}
    args: list[str] = []
    for name in names if names is not None else options:
        option, value = options[name], params.get(name)
        if value is None or value is False:
            continue
        flag = max(option.opts, key=len)  # the long form
        args += [flag] if option.is_flag else [flag, str(value)]
    return args
