"""Everything a loader needs besides its data and its curriculum: one frozen, validated object.

::

    settings = LoaderSettings(batch_size=256, device="cuda", echo="auto", reprob=0.25)
    train = CurriculumLoader("data", cur, settings=settings)
    val = ValidationLoader("data", 224, settings=settings)     # device, threads, format, shard

The keyword form (``CurriculumLoader("data", cur, batch_size=256, device="cuda", ...)``) builds
the same object. Each setting is checked once, here, with a one-line error naming it; what the
settings resolve to is derived here too, in one place each: the torch device, the rank's shard,
the data source (its left-out files reported when ``verbose``), the DALI pipeline's config
(:class:`~etpp_dali.loader.feeds.PipelineConfig`), the echo setting and the output format.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from etpp_dali.data.sources import Source, open_source, report_left_out
from etpp_dali.loader.echo.schedule import DEFAULT_ECHO_BUFFER_MB, EchoSetting, echo_factor_value, parse_echo
from etpp_dali.loader.feeds import PipelineConfig
from etpp_dali.util.devices import resolve_device
from etpp_dali.util.threads import usable_cores

__all__ = ["LoaderSettings", "distributed_shard", "settings_from"]

DataArg = str | Path | Sequence[str | Path] | Source  # what a loader reads: a path, paths or a Source


def distributed_shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    """The rank and world size: given, else from an initialised ``torch.distributed``."""
    if shard_id is None and num_shards is None and torch.distributed.is_available() \
            and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if num_shards is not None and (_not_int(num_shards) or num_shards < 1):
        raise ValueError(f"num_shards = {num_shards!r} is invalid; use an integer >= 1")
    shard_id, num_shards = shard_id or 0, num_shards or 1
    if _not_int(shard_id) or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id = {shard_id!r} is outside 0..{num_shards - 1}")
    return shard_id, num_shards


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, numbers.Integral)


def _at_least(name: str, value: Any, low: int, optional: bool = False) -> None:
    """An integer setting >= ``low`` (or None when ``optional``), else a one-line error naming it."""
    if optional and value is None:
        return
    if _not_int(value) or value < low:
        raise ValueError(f"{name} = {value!r} is invalid; use an integer >= {low}" + (" or None" if optional else ""))


@dataclass(frozen=True)
class LoaderSettings:
    """A loader's settings (see the module docstring); the loaders document each one.

    ``batch_size``: per device; ``device``: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
    (``device_id`` picks the GPU); ``num_threads``: DALI's CPU threads (None: the usable cores);
    ``seed``: the draws and the order; ``lowpass``: ``"fourier"`` (the exact crop) or ``"resize"``;
    ``fourier_backend``, ``interpolation`` (None: cubic), ``hw_decoder_load``, ``prefetch``: the
    pipeline's; ``shard_id``/``num_shards``: this rank (None: from ``torch.distributed``);
    ``channels_last``/``dtype``: the images handed out; ``replay_buffer``, ``echo``, ``echo_max``,
    ``echo_buffer_mb``: replay and echo (:mod:`etpp_dali.loader.echo`); ``reprob``: random erasing;
    ``feed_threads``: threads that make batches ahead of DALI (None: none where the graph reads
    the files, one where the feed reads them, as for tar shards; 0: on the caller's thread; the
    batches are the same either way, :class:`~etpp_dali.loader.plans.Feed`); ``verbose``: report
    left-out files and echo choices on stderr.
    """

    batch_size: int
    device: str = "auto"
    device_id: int | None = None
    num_threads: int | None = None
    seed: int = 0
    shard_id: int | None = None
    num_shards: int | None = None
    lowpass: str = "fourier"
    fourier_backend: str = "auto"
    randaugment: bool = True
    interpolation: str | None = None
    hw_decoder_load: float = 0.65
    prefetch: int = 2
    channels_last: bool = False
    dtype: torch.dtype = torch.float32
    replay_buffer: int | None = None
    echo: str | int = "augment"
    echo_max: int = 4
    echo_buffer_mb: float = DEFAULT_ECHO_BUFFER_MB
    reprob: float = 0.0
    feed_threads: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        _at_least("batch_size", self.batch_size, 1)
        _at_least("seed", self.seed, 0)
        _at_least("num_threads", self.num_threads, 1, optional=True)
        _at_least("prefetch", self.prefetch, 1)
        _at_least("replay_buffer", self.replay_buffer, 1, optional=True)
        _at_least("feed_threads", self.feed_threads, 0, optional=True)
        resolve_device(self.device, self.device_id)  # the device's name, and that this machine has it
        if self.shard_id is not None or self.num_shards is not None:
            distributed_shard(self.shard_id, self.num_shards)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"dtype = {self.dtype!r} is invalid; use a floating torch dtype (torch.float32, ...)")
        if isinstance(self.reprob, bool) or not isinstance(self.reprob, (int, float)) or not 0 <= self.reprob <= 1:
            raise ValueError(f"reprob = {self.reprob!r} is outside 0..1 (the chance a sample is erased)")
        parse_echo(self.echo, self.echo_buffer_mb)  # raises on a bad echo or echo_buffer_mb
        object.__setattr__(self, "echo_max", echo_factor_value(self.echo_max, "echo_max"))
        # lowpass, fourier_backend, interpolation and hw_decoder_load are checked where the pipeline reads them
        self.pipeline_config(torch.device("cpu"), resolution=PipelineConfig.resolution, batch_size=self.batch_size)

    @property
    def echo_setting(self) -> EchoSetting:
        """``echo`` and ``echo_buffer_mb`` as the loader runs them."""
        return parse_echo(self.echo, self.echo_buffer_mb)

    def feed_workers(self, read_files: bool) -> int:
        """The feed's worker threads: ``feed_threads``; by default none where the graph reads the
        files (``read_files``: the feed only draws), else one, which reads the bytes off the
        training loop's thread."""
        if self.feed_threads is not None:
            return self.feed_threads
        return 0 if read_files else 1

    def torch_device(self) -> torch.device:
        """The device the batches are on; a GPU is named by its index (DALI and torch then agree)."""
        resolved = torch.device(resolve_device(self.device, self.device_id))
        if resolved.type == "cuda" and resolved.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return resolved

    def shard(self) -> tuple[int, int]:
        """This rank's (shard_id, num_shards): :func:`distributed_shard`."""
        return distributed_shard(self.shard_id, self.num_shards)

    def open_data(self, data: DataArg, split: str, classes: Sequence[str] | None = None) -> Source:
        """``data`` as a :class:`~etpp_dali.data.sources.Source` (``split``: its ``train``/``val``
        folder when it has one); the files left out are reported once when ``verbose``."""
        source = data if isinstance(data, Source) else open_source(data, split, classes=classes)
        if self.verbose:
            report_left_out(source)
        return source

    def pipeline_config(self, device: torch.device, resolution: int, batch_size: int,
                        read_files: bool = False) -> PipelineConfig:
        """The DALI pipeline's config on ``device`` for images of ``resolution`` in batches of
        ``batch_size`` (the largest a pipeline run makes); ``read_files``: the graph reads the
        image files (a source of files, not tar members)."""
        gpu = device.type == "cuda"
        return PipelineConfig(resolution=resolution, batch_size=batch_size, device="gpu" if gpu else "cpu",
                              device_id=device.index if gpu else None,
                              num_threads=self.num_threads or usable_cores(), seed=self.seed, lowpass=self.lowpass,
                              fourier_backend=self.fourier_backend, randaugment=self.randaugment,
                              interpolation=self.interpolation or "cubic", hw_decoder_load=self.hw_decoder_load,
                              prefetch=self.prefetch, read_files=read_files)

    def format_images(self, images: torch.Tensor) -> torch.Tensor:
        """The memory format and dtype asked for (``channels_last``, ``dtype``)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images if self.dtype == torch.float32 else images.to(self.dtype)


_FIELDS = frozenset(f.name for f in dataclasses.fields(LoaderSettings))


def settings_from(owner: str, settings: LoaderSettings | None, batch_size: int | None,
                  options: Mapping[str, Any], allowed: frozenset[str] = _FIELDS) -> LoaderSettings:
    """A loader's settings from either of its two forms: ``settings=LoaderSettings(...)``, or
    ``batch_size`` and keywords (``allowed``: the settings ``owner`` takes as keywords)."""
    if settings is not None:
        if not isinstance(settings, LoaderSettings):
            raise TypeError(f"{owner}: settings is a {type(settings).__name__}; give a LoaderSettings")
        if batch_size is not None or options:
            raise TypeError(f"{owner}: give settings=LoaderSettings(...) or batch_size and keywords, not both")
        return settings
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{owner} got an unexpected keyword argument {unknown[0]!r}")
    if batch_size is None:
        raise TypeError(f"{owner} needs batch_size (or settings=LoaderSettings(...))")
    return LoaderSettings(batch_size=batch_size, **options)
