"""The model of a run: a timm model by name, made to take every band of the schedule.

Band rules: a convnet takes any input size; ViT/DeiT are built with timm's ``dynamic_img_size``,
so their position embeddings are interpolated to the band's patch grid in the forward pass;
Swin's attention windows are set to B / 32 at each band change (7 at 224, 3 at 96) and its
relative-position tables are interpolated to the new windows. A model that still cannot take a
band is refused before training starts.

A band change keeps every parameter *object*: the optimiser, the EMA and DDP refer to parameters
by identity, so a table is resized in place, and :func:`adapt_model_to_band` says which ones
changed shape so that their optimiser state can be resized the same way.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import timm
import torch
from timm.layers import resize_rel_pos_bias_table

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.train.config import RecipeError, TrainConfig

__all__ = ["ResizedTable", "adapt_model_to_band", "build_model", "check_model_takes_bands", "create_model",
           "model_at_band", "model_band", "unwrap_model", "wrap_for_ranks"]

SWIN_WINDOW_DIVISOR = 32  # Swin's window at band B is B / 32 patches (7 at 224)
_SWIN_TABLE = "relative_position_bias_table"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def _is_swin(model: torch.nn.Module) -> bool:
    base = unwrap_model(model)
    return type(base).__name__ == "SwinTransformer" and hasattr(base, "set_input_size")


def model_band(model: torch.nn.Module) -> int | None:
    """The band a model whose parameters depend on it (a Swin) is set for; None for one that
    takes every band as it is."""
    return int(unwrap_model(model).patch_embed.img_size[0]) if _is_swin(model) else None


@dataclass(frozen=True, eq=False)
class ResizedTable:
    """A relative-position table that a band change resized (in place) between two windows."""

    param: torch.nn.Parameter
    old_window: tuple[int, int]
    new_window: tuple[int, int]

    def resize(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``, shaped as the table was, resized as the table was (for its optimiser state)."""
        with torch.no_grad(), _quiet_timm_interpolation():
            return resize_rel_pos_bias_table(tensor, new_window_size=self.new_window, new_bias_shape=self.param.shape,
                                             old_window_size=self.old_window)


@contextlib.contextmanager
def _quiet_timm_interpolation() -> Iterator[None]:
    """timm's table interpolation trips two torch warnings (a non-contiguous searchsorted input,
    list indexing) that tell a user of the trainer nothing they can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"timm\.layers\.interpolate")
        yield


def adapt_model_to_band(model: torch.nn.Module, band: int) -> list[ResizedTable]:
    """Make ``model`` take ``band`` x ``band`` inputs: a Swin gets windows of band / 32 and its
    tables interpolated to them, in place; ViT/DeiT (built with ``dynamic_img_size``) and convnets
    need nothing. Returns the tables that changed shape."""
    if not _is_swin(model):
        return []
    base = unwrap_model(model)
    attns = [m for m in base.modules() if hasattr(m, "set_window_size") and hasattr(m, _SWIN_TABLE)]
    before = [(getattr(m, _SWIN_TABLE), tuple(m.window_size)) for m in attns]
    with _quiet_timm_interpolation():
        base.set_input_size(img_size=(band, band), window_size=max(1, band // SWIN_WINDOW_DIVISOR))
    resized = []
    for attn, (param, old_window) in zip(attns, before):
        fresh = getattr(attn, _SWIN_TABLE)
        if fresh is param:  # the window did not change
            continue
        with torch.no_grad():
            param.data = fresh.data  # timm made a new Parameter: move its values into the old object
        param.grad = None  # a gradient of the old shape cannot be accumulated into
        attn.relative_position_bias_table = param
        resized.append(ResizedTable(param, old_window, tuple(attn.window_size)))
    return resized


def model_at_band(model: torch.nn.Module, band: int) -> torch.nn.Module:
    """``model`` ready for ``band`` without changing it: itself when nothing of it depends on the
    band (or it is set for it already), else an adapted copy (for evaluation at full size, whose
    round trip through a Swin's table interpolation would blur the trained tables)."""
    base = unwrap_model(model)
    if model_band(base) in (None, band):
        return base
    twin = copy.deepcopy(base)
    adapt_model_to_band(twin, band)
    return twin


def create_model(name: str, num_classes: int, drop_path: float, **overrides: Any) -> torch.nn.Module:
    """A timm model by name; ViT-like models get ``dynamic_img_size=True`` when they take it.
    ``overrides`` go to timm as they are (a ViT's ``patch_size``, ``img_size``)."""
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise RecipeError(f"--model {name!r} is not a timm model; see timm.list_models() "
                          "(e.g. resnet50, convnext_tiny, deit_small_patch16_224)")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, **overrides}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:  # the model does not take dynamic_img_size (convnets)
        pass
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as exc:  # nor the overrides (a convnet given a patch_size)
        if not overrides:
            raise
        given = ", ".join(f"{k} = {v}" for k, v in overrides.items())
        raise RecipeError(f"--model {name} does not take {given} (a ViT's settings): {exc}") from None


def check_model_takes_bands(model: torch.nn.Module, bands: list[int], device: torch.device,
                            memory_format: torch.memory_format) -> None:
    """A forward pass at every band, before any training: a clear error if one fails. The passes
    run on a copy when the model's parameters depend on the band, so ``model`` is left as it was."""
    probe = copy.deepcopy(unwrap_model(model)) if model_band(model) is not None else unwrap_model(model)
    was_training = probe.training
    probe.eval()
    try:
        with torch.no_grad():
            for band in bands:
                adapt_model_to_band(probe, band)
                x = torch.zeros(2, 3, band, band, device=device).contiguous(memory_format=memory_format)
                try:
                    probe(x)
                except Exception as exc:  # the model's own message says why
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise RecipeError(f"--model {type(probe).__name__} cannot take {band} x {band} "
                                      f"inputs (a band of the schedule): {msg}; use a convnet, a ViT built with "
                                      "dynamic_img_size, a Swin, or a schedule whose bands it takes") from None
    finally:
        probe.train(was_training)


def wrap_for_ranks(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` (its bare module) in a new DistributedDataParallel wrapper when a process group is
    up, else the bare module. A band change that resizes parameters needs a new wrapper: DDP's
    gradient buckets are laid out for the shapes it saw when it was built."""
    base = unwrap_model(model)
    if not torch.distributed.is_initialized():
        return base
    return torch.nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)


def build_model(cfg: TrainConfig, curriculum: Curriculum, num_classes: int, device: torch.device,
                prepare: Callable[[torch.nn.Module], None] | None = None,
                ) -> tuple[torch.nn.Module, torch.memory_format]:
    """The run's model on ``device``, set for the schedule's first band and DDP-wrapped when a
    process group is up, checked at every band the schedule trains at and at the full
    resolution; returns it with its memory format. A ViT given ``cfg.patch_size`` gets that
    patch and position embeddings for the full resolution; ``prepare`` runs on the bare model
    before the DDP wrapper is built (loading weights, freezing some)."""
    vit = {"patch_size": cfg.patch_size, "img_size": curriculum.resolution} if cfg.patch_size else {}
    model = create_model(cfg.model, num_classes, cfg.drop_path_rate(curriculum), **vit).to(device)
    if prepare is not None:
        prepare(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    bands = sorted({s.band for s in curriculum.stages if s.epochs} | {curriculum.resolution})
    check_model_takes_bands(model, bands, device, memory_format)
    adapt_model_to_band(model, curriculum.stage_at(0).band)
    return wrap_for_ranks(model, device), memory_format
