"""A small convolutional image classifier with BatchNorm: the convolutional baseline for image tasks.

Each stage is a 3x3 convolution (the first at stride `first_stride`, 1 by default; the others at
stride 2) -> BatchNorm -> ReLU; global average pooling and a linear head follow. BatchNorm
statistics are the model's non-parameter state (`nnx.BatchStat`): training (`rng` given)
normalises with the batch's statistics and updates the running averages; evaluation
(`rng=None`) uses the running averages and changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    """`model.*` fields of a ConvNet; `image_shape` (H, W, C) and `num_classes` come from the data."""

    num_classes: int
    image_shape: tuple[int, int, int]
    channels: tuple[int, ...] = (16, 32)
    first_stride: int = 1
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"model.channels must be positive, got {self.channels}")
        if self.first_stride not in (1, 2):
            raise ValueError(f"model.first_stride must be 1 or 2, got {self.first_stride}")
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        object.__setattr__(self, "channels", tuple(self.channels))


class ConvNet(nnx.Module):
    """image `[B, H, W, C]` float -> logits `[B, num_classes]` (float32)."""

    def __init__(self, cfg: ConvNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        widths = (cfg.image_shape[-1],) + cfg.channels
        self.convs = nnx.List([
            nnx.Conv(c_in, c_out, (3, 3), strides=cfg.first_stride if i == 0 else 2,
                     use_bias=False, dtype=cfg.dtype, rngs=rngs)
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))])
        self.norms = nnx.List([nnx.BatchNorm(c, momentum=cfg.bn_momentum, rngs=rngs)
                               for c in cfg.channels])
        self.head = nnx.Linear(cfg.channels[-1], cfg.num_classes, rngs=rngs)

    def __call__(self, image: Array, *, rng: Array | None = None) -> Array:
        if image.ndim != 4 or image.shape[1:] != self.cfg.image_shape:
            raise ValueError(f"image must be [batch, *{self.cfg.image_shape}], got {image.shape}")
        x = image.astype(self.cfg.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x), use_running_average=rng is None))
        return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)
