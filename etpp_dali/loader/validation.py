"""The validation loader: full-resolution evaluation batches, every image of the split once."""

from __future__ import annotations

import functools
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from etpp_dali.loader.graphs import VAL_OUTPUTS, define_val_pipeline
from etpp_dali.loader.plans import Feed, ValPlan
from etpp_dali.loader.runner import PipelineRunner
from etpp_dali.loader.settings import DataArg, LoaderSettings, settings_from

__all__ = ["ValidationLoader"]

# the settings a validation loader takes as keywords (the rest are the training loader's)
_KEYWORDS = frozenset({"device", "device_id", "num_threads", "shard_id", "num_shards", "interpolation",
                       "channels_last", "dtype", "feed_threads", "verbose"})


class ValidationLoader:
    """Full-resolution evaluation batches: every image of the split exactly once.

    timm's evaluation transform: the shorter side resized to ``floor(R / crop_pct)``, a centre
    crop of R, normalised; the sizes and the crop's place are torchvision's, computed in Python,
    so the CPU and GPU pipelines take the same pixels. With several ranks each takes a
    contiguous part (sizes differ by at most one image); the last batch of a rank is smaller
    rather than padded, so no image counts twice.

    The settings: ``batch_size`` and the keywords ``device``, ``device_id``, ``num_threads``,
    ``shard_id``, ``num_shards``, ``interpolation``, ``channels_last``, ``dtype``, ``feed_threads``, ``verbose``
    (as :class:`~etpp_dali.loader.settings.LoaderSettings` has them), or ``settings=``: the
    training loader's settings serve as they are (those of augmentation and echo go unused).
    ``classes``: the training split's class names (its label order); ``indices``: the source
    images to evaluate (default: all).
    """

    def __init__(self, data: DataArg, resolution: int, batch_size: int | None = None, *,
                 classes: Sequence[str] | None = None, indices: Sequence[int] | None = None,
                 settings: LoaderSettings | None = None, **options: Any) -> None:
        self.settings = settings = settings_from("ValidationLoader", settings, batch_size, options, _KEYWORDS)
        self.batch_size = settings.batch_size
        self.device = settings.torch_device()
        self.source = settings.open_data(data, "val", classes)
        self.shard_id, self.num_shards = settings.shard()
        everything = np.arange(len(self.source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.cfg = settings.pipeline_config(self.device, resolution, self.batch_size, self.source.reads_files)
        self.plan = ValPlan(self.source, np.array_split(everything, self.num_shards)[self.shard_id], self.batch_size,
                            self.cfg)
        self._runner = PipelineRunner(VAL_OUTPUTS, functools.partial(define_val_pipeline, self.cfg))

    @property
    def indices(self) -> np.ndarray:
        """This rank's source indices, in order (less any file the decoder failed on)."""
        return self.plan.indices

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._runner.start(Feed(self.plan, 0, self.settings.feed_workers(self.cfg.read_files)))
        while self._runner.feed.next_batch() < len(self):
            out = self._runner.run()
            self._runner.feed.take()
            yield self.settings.format_images(out["images"]), out["labels"].to(self.device, non_blocking=True)
