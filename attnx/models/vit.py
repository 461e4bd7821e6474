"""A plain Vision Transformer (Dosovitskiy et al., 2021): the dense-attention baseline for image
tasks.

    image [B, H, W, C] -> P x P patches (layers/patch.py) -> [B, H/P * W/P, D] raster tokens
    -> [CLS] + learned positions -> pre-LN Transformer encoder (models/transformer.py `Stack`,
    dense attention by default) -> final LayerNorm -> [CLS] (or mean) -> Dense [B, num_classes]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.layers.feed_forward import dropout
from attnx.layers.patch import PatchEmbed
from attnx.models.transformer import Stack, TransformerConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """`model.*` fields of a ViT; `image_shape` (H, W, C) and `num_classes` come from the data.

    Attributes:
      patch_size: P (must divide H and W).
      d_model, num_heads, num_layers, d_ff: encoder sizes (GELU feed-forward).
      dropout_rate: dropout on embeddings and residual branches.
      mixup_alpha: train on mixup batches (0: none; `attnx.tasks.mixup`).
      attention: the registry mechanism of the encoder ('dense': the baseline).
      pool: 'cls' (the [CLS] token, as the paper) or 'mean' (of the patch tokens).
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    patch_size: int = 4
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    d_ff: int = 512
    dropout_rate: float = 0.0
    mixup_alpha: float = 0.0
    attention: str = "dense"
    pool: str = "cls"
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"model.pool must be 'cls' or 'mean', got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        h, w, _ = self.image_shape
        return (h // self.patch_size) * (w // self.patch_size)

    def encoder_config(self) -> TransformerConfig:
        """The encoder's settings (a pre-LN Transformer with GELU feed-forward)."""
        return TransformerConfig(
            vocab_size=1, d_model=self.d_model, num_heads=self.num_heads,
            num_layers=self.num_layers, d_ff=self.d_ff, max_len=self.num_patches + 1,
            dropout_rate=self.dropout_rate, attention=self.attention, activation="gelu",
            dtype=self.dtype)


class ViT(nnx.Module):
    """image `[B, H, W, C]` float -> logits `[B, num_classes]` (float32)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
        h, w, _ = cfg.image_shape
        if cfg.patch_size < 1 or h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"model.patch_size={cfg.patch_size} must divide the image's "
                             f"height {h} and width {w}")
        self.cfg = cfg
        self.patches = PatchEmbed(cfg.image_shape[-1], cfg.d_model, cfg.patch_size,
                                  dtype=cfg.dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        self.cls = nnx.Param(init(rngs.params(), (1, 1, cfg.d_model)))
        self.positions = nnx.Param(init(rngs.params(), (1, cfg.num_patches + 1, cfg.d_model)))
        self.encoder = Stack(cfg.encoder_config(), cfg.num_layers, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.num_classes, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, image: Array, *, rng: Array | None = None) -> Array:
        if image.ndim != 4 or image.shape[1:] != self.cfg.image_shape:
            raise ValueError(f"image must be [batch, *{self.cfg.image_shape}] (H, W, C), got "
                             f"shape {image.shape}")
        r_embed, r_encoder = (None, None) if rng is None else jax.random.split(rng)
        tokens = PatchEmbed.tokens(self.patches(image.astype(self.cfg.dtype)))
        cls = jnp.broadcast_to(self.cls[...].astype(tokens.dtype), (tokens.shape[0], 1,
                                                                    tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens], axis=1) + self.positions[...].astype(tokens.dtype)
        x = self.encoder(dropout(x, self.cfg.dropout_rate, r_embed), rng=r_encoder)
        pooled = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(axis=1)
        return self.head(pooled).astype(jnp.float32)
