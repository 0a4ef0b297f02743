"""Masked-autoencoder (MAE) pre-training of a timm ViT on the curriculum's band-limited views.

Built on timm's own pieces rather than a self-supervised library: the encoder is the timm
:class:`~timm.models.vision_transformer.VisionTransformer` a classify run would train (built with
``dynamic_img_size``, so its position embeddings are resampled to each band's patch grid by timm's
``resample_abs_pos_embed``), and the decoder is a small module of timm ``Block`` s whose own
position embeddings are resampled the same way. So one checkpoint runs at every band, and its
encoder loads into the classifier that ``--init-from`` fine-tunes (:mod:`etpp_dali.train.finetune`).

One step: the band-B image (the loader's exact Fourier crop of the R-pixel view) is cut into
(B / p)^2 patches; a random 75 % of them are masked per image; the encoder sees the class token
and the rest; the decoder puts a learned mask token at each masked place and predicts every
patch's target; the loss is the mean squared error over the masked patches. The target is the
same band-B image: its pixels per patch, each patch normalised to zero mean and unit variance
(MAE's ``norm_pix_loss``), or its HOG features (:mod:`etpp_dali.ops.hog`: 9 orientations, 8-px
cells, per channel, as MaskFeat). The model's forward returns that loss, so the trainer's step,
gradient accumulation, AMP, EMA, DDP and checkpoints run it as they run a classifier.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import is_model_in_modules
from timm.models.vision_transformer import Block, VisionTransformer

from etpp_dali.curriculum.schedule import Curriculum
from etpp_dali.ops.hog import HOG_CELL, HOG_ORIENTATIONS, hog_patch_targets
from etpp_dali.train.config import RecipeError, TrainConfig
from etpp_dali.train.models import check_model_takes_bands, create_model, wrap_for_ranks

__all__ = ["MAEDecoder", "MaskedAutoencoder", "ModelLoss", "build_mae", "sincos_pos_embed", "vit_encoder"]

NORM_PIX_EPS = 1e-6  # MAE's: the variance floor of a flat patch


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine embedding of a ``grid`` x ``grid`` patch grid: (1, grid^2, dim),
    half the channels for the row, half for the column."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = [f(axis.reshape(-1, 1) * omega) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float().unsqueeze(0)


class MAEDecoder(torch.nn.Module):
    """MAE's decoder: a linear map from the encoder's width, a learned mask token, position
    embeddings of a ``grid`` x ``grid`` patch grid (resampled to the band's grid), ``depth`` timm
    Blocks and a linear head to ``out_dim`` values a patch."""

    def __init__(self, embed_dim: int, grid: int, out_dim: int, dim: int = 512, depth: int = 8,
                 heads: int = 16) -> None:
        super().__init__()
        self.grid = grid
        self.embed = torch.nn.Linear(embed_dim, dim)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(sincos_pos_embed(dim, grid))
        self.blocks = torch.nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, out_dim)
        torch.nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, encoded: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predictions (N, L, out_dim) for every patch of a ``grid`` from ``encoded`` (N, 1 + K, D:
        the class token, then the visible patches at the places ``keep`` (N, K) names)."""
        x = self.embed(encoded)
        n, dim = x.shape[0], x.shape[-1]
        tokens = self.mask_token.to(x.dtype).expand(n, grid[0] * grid[1], dim)
        tokens = tokens.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        pos = resample_abs_pos_embed(self.pos_embed, new_size=list(grid), old_size=[self.grid, self.grid],
                                     num_prefix_tokens=0)
        x = torch.cat([x[:, :1], tokens + pos.to(x.dtype)], dim=1)
        return self.head(self.norm(self.blocks(x)))[:, 1:]


class ModelLoss(torch.nn.Module):
    """The criterion of a model whose forward returns its loss: the output as it is."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output


class MaskedAutoencoder(torch.nn.Module):
    """A timm ViT ``encoder`` and an :class:`MAEDecoder`; ``forward(images)`` is the loss of one
    batch (labels are not used), :meth:`features` the frozen features the k-NN monitor reads."""

    def __init__(self, encoder: VisionTransformer, *, grid: int, target: str = "pixels", mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.target, self.mask_ratio, self.norm_pix_loss = target, mask_ratio, norm_pix_loss
        channels = encoder.patch_embed.proj.in_channels
        per_patch = (self.patch // HOG_CELL) ** 2 * channels * HOG_ORIENTATIONS if target == "hog" else \
            self.patch ** 2 * channels
        self.decoder = MAEDecoder(encoder.embed_dim, grid, per_patch, decoder_dim, decoder_depth, decoder_heads)
        with torch.no_grad():  # MAE starts the encoder's position embeddings at the sine-cosine ones too
            prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
            encoder.pos_embed[:, prefix:] = sincos_pos_embed(encoder.embed_dim, grid)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves without weight decay (timm's optimiser factory reads this)."""
        return {"encoder.pos_embed", "encoder.cls_token", "decoder.pos_embed", "decoder.mask_token"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        encoded, keep, grid = self.encode_visible(images)
        pred = self.decoder(encoded, keep, grid).float()
        with torch.no_grad():
            target = self.patch_targets(images)
        mask = torch.ones(pred.shape[:2], device=pred.device)
        mask.scatter_(1, keep, 0.0)  # 1 where a patch was masked: only those count
        per_patch = (pred - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def encode_visible(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The encoder on a random ``1 - mask_ratio`` of each image's patches: its output (N, 1 + K,
        D; the class token first, other prefix tokens dropped), the kept places (N, K) and the grid."""
        enc = self.encoder
        x = enc.patch_embed(images)  # (N, H, W, D) under dynamic_img_size
        grid = (x.shape[1], x.shape[2])
        x = enc._pos_embed(x)
        prefix = enc.num_prefix_tokens
        n, tokens, dim = x.shape[0], grid[0] * grid[1], x.shape[-1]
        kept = max(1, int(tokens * (1.0 - self.mask_ratio)))
        keep = torch.rand(n, tokens, device=x.device).argsort(dim=1)[:, :kept]
        visible = torch.gather(x[:, prefix:], 1, keep.unsqueeze(-1).expand(-1, -1, dim))
        x = enc.norm_pre(torch.cat([x[:, :prefix], visible], dim=1))
        x = enc.norm(enc.blocks(x))
        return torch.cat([x[:, :1], x[:, prefix:]], dim=1), keep, grid

    def patch_targets(self, images: torch.Tensor) -> torch.Tensor:
        """What each patch of ``images`` should be reconstructed as: (N, L, values a patch)."""
        images = images.float()
        if self.target == "hog":
            return hog_patch_targets(images, self.patch)
        n, c, h, w = images.shape
        p = self.patch
        patches = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, p * p * c)
        if not self.norm_pix_loss:
            return patches
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + NORM_PIX_EPS).sqrt()

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The whole image through the encoder, no mask: the mean of its patch tokens (N, D)."""
        x = self.encoder.forward_features(images)
        return x[:, self.encoder.num_prefix_tokens:].mean(dim=1)


def vit_encoder(name: str, *, resolution: int, patch: int, drop_path: float, num_classes: int = 0) -> VisionTransformer:
    """A timm ViT by name with ``patch`` x ``patch`` patches and position embeddings for a
    ``resolution`` input (resampled at other bands); a one-line :class:`RecipeError` for a model
    that is not a timm VisionTransformer (a convnet, a Swin)."""
    if name in timm.list_models() and not is_model_in_modules(name, ["vision_transformer"]):
        raise RecipeError(f"task mae pre-trains a ViT, and --model {name} is not one (a convnet or another "
                          "family cannot be masked patch by patch); use e.g. vit_tiny_patch16_224")
    model = create_model(name, num_classes, drop_path, img_size=resolution, patch_size=patch)
    if not isinstance(model, VisionTransformer):
        raise RecipeError(f"task mae pre-trains a timm VisionTransformer, and --model {name} builds a "
                          f"{type(model).__name__}; use e.g. vit_tiny_patch16_224")
    return model


def build_mae(cfg: TrainConfig, curriculum: Curriculum,
              device: torch.device) -> tuple[torch.nn.Module, torch.memory_format]:
    """The MAE of ``cfg`` on ``device`` (DDP-wrapped when a process group is up), checked at every
    band of ``curriculum``; returns it with its memory format."""
    patch = cfg.vit_patch()
    if cfg.mae_target == "hog" and patch % HOG_CELL:
        raise RecipeError(f"mae_target hog needs a patch size that is a multiple of the {HOG_CELL}-px HOG cell, "
                          f"not {patch}")
    encoder = vit_encoder(cfg.model, resolution=curriculum.resolution, patch=patch,
                          drop_path=cfg.drop_path_rate(curriculum))
    model = MaskedAutoencoder(encoder, grid=curriculum.resolution // patch, target=cfg.mae_target,
                              mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss,
                              decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
                              decoder_heads=cfg.decoder_heads).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    bands = sorted({s.band for s in curriculum.stages if s.epochs} | {curriculum.resolution})
    check_model_takes_bands(model, bands, device, memory_format)
    return wrap_for_ranks(model, device), memory_format
