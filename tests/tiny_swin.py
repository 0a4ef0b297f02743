"""A Swin small enough for CPU tests, registered with timm as ``etpp_test_swin``, and a schedule
file whose two bands give it two window sizes (2 at 64 px, 3 at 96 px)."""

from __future__ import annotations

from pathlib import Path

from timm.models import register_model
from timm.models.swin_transformer import SwinTransformer

NAME = "etpp_test_swin"
RESOLUTION = 96
BANDS = (64, 96)


@register_model
def etpp_test_swin(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Two stages of two blocks (so shifted windows and their masks too), 16 channels: four
    relative-position tables, about 35k parameters. Built at 224 with windows of 7, as
    swin_tiny_patch4_window7_224 is; timm's loader options (cache_dir, pretrained_cfg) are dropped."""
    if pretrained:
        raise ValueError(f"{NAME} has no pretrained weights")
    taken = {k: kwargs[k] for k in ("num_classes", "drop_path_rate") if k in kwargs}
    return SwinTransformer(img_size=224, patch_size=4, window_size=7, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                           **taken)


def write_schedule(folder: Path, budget: float = 2) -> Path:
    """A schedule file: an equal share of ``budget`` at each band of BANDS."""
    path = folder / "two_bands.yaml"
    stages = "".join(f"  - {{band: {band}, magnitude: {i * 9 // (len(BANDS) - 1)}}}\n" for i, band in enumerate(BANDS))
    path.write_text(f"budget: {budget}\nresolution: {RESOLUTION}\nstages:\n{stages}")
    return path
