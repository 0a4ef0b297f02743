"""The model of a run: a timm model by name, made to take every band of the schedule.

Band rules: a convnet takes any input size; ViT/DeiT are built with timm's ``dynamic_img_size``,
so their position embeddings are interpolated to the band's patch grid in the forward pass;
Swin's attention windows are set to B / 32 at each band change (7 at 224, 3 at 96). A model
that still cannot take a band is refused before training starts.
"""

from __future__ import annotations

from typing import Any

import torch

from .curriculum import Curriculum
from .recipe import RecipeError, TrainConfig

__all__ = ["adapt_model_to_band", "build_model", "check_model_takes_bands", "create_model", "unwrap_model"]

SWIN_WINDOW_DIVISOR = 32  # Swin's window at band B is B / 32 patches (7 at 224)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def adapt_model_to_band(model: torch.nn.Module, band: int) -> None:
    """Make ``model`` take ``band`` x ``band`` inputs: a Swin gets windows of band / 32; ViT/DeiT
    (built with ``dynamic_img_size``) and convnets need nothing."""
    base = unwrap_model(model)
    if type(base).__name__ == "SwinTransformer" and hasattr(base, "set_input_size"):
        base.set_input_size(img_size=(band, band), window_size=max(1, band // SWIN_WINDOW_DIVISOR))


def create_model(name: str, num_classes: int, drop_path: float) -> torch.nn.Module:
    """A timm model by name; ViT-like models get ``dynamic_img_size=True`` when they take it."""
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise RecipeError(f"--model {name!r} is not a timm model; see timm.list_models() "
                          "(e.g. resnet50, convnext_tiny, deit_small_patch16_224)")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:  # the model does not take dynamic_img_size (convnets)
        return timm.create_model(name, **kwargs)


def check_model_takes_bands(model: torch.nn.Module, bands: list[int], device: torch.device,
                            memory_format: torch.memory_format) -> None:
    """A forward pass at every band, before any training: a clear error if one fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for band in bands:
                adapt_model_to_band(model, band)
                x = torch.zeros(2, 3, band, band, device=device).contiguous(memory_format=memory_format)
                try:
                    model(x)
                except Exception as exc:  # the model's own message says why
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise RecipeError(f"--model {type(unwrap_model(model)).__name__} cannot take {band} x {band} "
                                      f"inputs (a band of the schedule): {msg}; use a convnet, a ViT built with "
                                      "dynamic_img_size, a Swin, or a schedule whose bands it takes") from None
    finally:
        adapt_model_to_band(model, bands[0])
        model.train(was_training)


def build_model(cfg: TrainConfig, curriculum: Curriculum, num_classes: int,
                device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The run's model on ``device`` (DDP-wrapped when a process group is up), checked at every band
    the schedule trains at and at the full resolution; returns it with its memory format."""
    model = create_model(cfg.model, num_classes, cfg.drop_path_rate(curriculum)).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    bands = sorted({s.band for s in curriculum.stages if s.epochs} | {curriculum.resolution})
    check_model_takes_bands(model, bands, device, memory_format)
    if torch.distributed.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, memory_format
