"""MaxViT (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022), faithful to the
official model (google-research/maxvit; timm's `maxvit_*_tf_*` ports of its weights).

    image [B, H, W, C]
    -> stem: conv 3x3 stride 2 -> BN -> GELU -> conv 3x3                       [B, H/2, W/2, S]
    -> stages s = 1..4, each `depths[s]` MaxViT blocks of `channels[s]`, the first of stride 2:
         MBConv (layers/mbconv.py) -> block attention + MLP -> grid attention + MLP
         (layers/multi_axis.py; P x P windows, G x G grid groups)
    -> head: global average pool -> LayerNorm -> Dense(head_hidden_size) -> tanh -> Dense
                                                                              [B, num_classes]

Stochastic depth rises linearly from 0 (first block) to `stochastic_depth` (last block); one
rate per MaxViT block, shared by its MBConv and both attention sub-blocks. Each stage's feature
map must be divisible by its window and grid: checked when the model is built (errors name the
stage). Convolutions pad as TensorFlow 'SAME', so a stride-2 stage maps n -> ceil(n / 2).

`VARIANTS` holds the paper's sizes (T, S, B at 224 px: window = grid = 7) and `cpu32`, a small
model for 32 x 32 inputs on CPU; a config copies a variant's fields into `config.model`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnx.layers.mbconv import MBConv, gelu
from attnx.layers.multi_axis import PartitionBlock
from attnx.layers.norm import LayerNorm

Array = jax.Array

# The paper's Table 1 sizes and a CPU-sized model for 32 x 32 images. `window` and `grid` are one
# size for every stage or one per stage.
VARIANTS: dict[str, dict[str, Any]] = {
    "T": dict(stem_width=64, channels=(64, 128, 256, 512), depths=(2, 2, 5, 2), window=7,
              grid=7),
    "S": dict(stem_width=64, channels=(96, 192, 384, 768), depths=(2, 2, 5, 2), window=7,
              grid=7),
    "B": dict(stem_width=64, channels=(96, 192, 384, 768), depths=(2, 6, 14, 2), window=7,
              grid=7),
    # 32 x 32: stem 16 x 16, stages 8, 4, 2, 1.
    "cpu32": dict(stem_width=32, channels=(32, 64, 96, 128), depths=(1, 1, 2, 1),
                  window=(4, 4, 2, 1), grid=(4, 4, 2, 1)),
}


def _per_stage(name: str, value: int | tuple[int, ...], stages: int) -> tuple[int, ...]:
    sizes = (value,) * stages if isinstance(value, int) else tuple(value)
    if len(sizes) != stages or min(sizes) < 1:
        raise ValueError(f"model.{name} must be a positive int or one per stage ({stages}), "
                         f"got {value!r}")
    return sizes


@dataclasses.dataclass(frozen=True)
class MaxViTConfig:
    """`model.*` fields of MaxViT; `image_shape` (H, W, C) and `num_classes` come from the data.

    Attributes:
      stem_width: channels of both stem convolutions.
      channels, depths: per stage.
      window: block attention's P (an int for all stages, or one per stage).
      grid: grid attention's G (likewise).
      head_dim: attention head width (heads = channels / head_dim).
      expand_ratio: MBConv hidden width / output width.
      se_ratio: squeeze-excitation width / MBConv output width.
      mlp_ratio: MLP hidden width / channels.
      stochastic_depth: drop-path rate of the last block (0 at the first).
      mixup_alpha: train on mixup batches with lambda ~ Beta(alpha, alpha) (0: none; the
        image-classification task's forward mixes, `attnx.tasks.mixup`).
      head_hidden_size: the pre-logits Dense width; None: the last stage's channels.
      block_attention, grid_attention: which partition attentions a block has (both, as the
        paper; block only for the ablation without global mixing).
      bn_momentum, bn_epsilon, ln_epsilon: normalisation settings (the official ones).
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    stem_width: int = 64
    channels: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 5, 2)
    window: int | tuple[int, ...] = 7
    grid: int | tuple[int, ...] = 7
    head_dim: int = 32
    expand_ratio: float = 4.0
    se_ratio: float = 0.25
    mlp_ratio: float = 4.0
    stochastic_depth: float = 0.0
    mixup_alpha: float = 0.0
    head_hidden_size: int | None = None
    block_attention: bool = True
    grid_attention: bool = True
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    ln_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        if not self.channels or len(self.channels) != len(self.depths) or min(self.depths) < 1:
            raise ValueError(f"model.channels and model.depths must be one positive entry per "
                             f"stage, got {self.channels} and {self.depths}")
        for name in ("image_shape", "channels", "depths"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("window", "grid"):
            object.__setattr__(self, name, _per_stage(name, getattr(self, name),
                                                      len(self.channels)))
        if not (self.block_attention or self.grid_attention):
            raise ValueError("model.block_attention and model.grid_attention are both False; "
                             "a MaxViT block needs at least one")
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError(f"model.stochastic_depth must be in [0, 1), "
                             f"got {self.stochastic_depth}")

    def stage_sizes(self) -> list[tuple[int, int]]:
        """The feature map (h, w) of each stage: `ceil(n / 2)` per stride 2 ('SAME' padding)."""
        h, w = -(-self.image_shape[0] // 2), -(-self.image_shape[1] // 2)
        sizes = []
        for _ in self.channels:
            h, w = -(-h // 2), -(-w // 2)
            sizes.append((h, w))
        return sizes

    def check_sizes(self) -> None:
        """ValueError naming the stage whose input map is odd (its stride-2 convolution and
        pooled shortcut would disagree) or whose feature map the window or grid does not
        divide."""
        h, w = self.image_shape[:2]
        inputs = [(h, w), (-(-h // 2), -(-w // 2))] + self.stage_sizes()[:-1]
        for s, (h_in, w_in) in enumerate(inputs[1:], 1):
            if h_in % 2 or w_in % 2:
                raise ValueError(
                    f"stage {s}: its input map {h_in}x{w_in} (image "
                    f"{self.image_shape[0]}x{self.image_shape[1]}) is odd; each stage halves "
                    "the map, so the image side must be a multiple of 2 ** (stages + 1) = "
                    f"{2 ** (len(self.channels) + 1)}")
        for s, ((h, w), p, g) in enumerate(zip(self.stage_sizes(), self.window, self.grid), 1):
            for name, size, used in (("window", p, self.block_attention),
                                     ("grid", g, self.grid_attention)):
                if used and (h % size or w % size):
                    raise ValueError(
                        f"stage {s}: its {h}x{w} feature map (image "
                        f"{self.image_shape[0]}x{self.image_shape[1]}) is not divisible by "
                        f"{name}={size}; pick model.{name} dividing every stage's map "
                        f"{self.stage_sizes()}")


class MaxViTBlock(nnx.Module):
    """MBConv -> block attention + MLP -> grid attention + MLP: `[B, H, W, C_in]` ->
    `[B, H/s, W/s, C_out]`."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, window: int,
                 grid: int, drop_path_rate: float, cfg: MaxViTConfig, rngs: nnx.Rngs):
        self.mbconv = MBConv(in_channels, out_channels, stride=stride,
                             expand_ratio=cfg.expand_ratio, se_ratio=cfg.se_ratio,
                             drop_path_rate=drop_path_rate, bn_momentum=cfg.bn_momentum,
                             bn_epsilon=cfg.bn_epsilon, dtype=cfg.dtype, rngs=rngs)
        partitions = [name for name, used in (("block", cfg.block_attention),
                                              ("grid", cfg.grid_attention)) if used]
        self.attentions = nnx.List([
            PartitionBlock(out_channels, name, window if name == "block" else grid,
                           head_dim=cfg.head_dim, mlp_ratio=cfg.mlp_ratio,
                           drop_path_rate=drop_path_rate, ln_epsilon=cfg.ln_epsilon,
                           dtype=cfg.dtype, rngs=rngs)
            for name in partitions])

    def __call__(self, x: Array, *, rng: Array | None = None) -> Array:
        x = self.mbconv(x, rng=None if rng is None else jax.random.fold_in(rng, 0))
        for i, attention in enumerate(self.attentions, 1):
            x = attention(x, rng=None if rng is None else jax.random.fold_in(rng, i))
        return x


class MaxViT(nnx.Module):
    """image `[B, H, W, C]` float -> logits `[B, num_classes]` (float32)."""

    def __init__(self, cfg: MaxViTConfig, *, rngs: nnx.Rngs):
        cfg.check_sizes()
        self.cfg = cfg
        in_channels = cfg.image_shape[-1]

        def conv(c_in: int, c_out: int, stride: int) -> nnx.Conv:
            return nnx.Conv(c_in, c_out, (3, 3), strides=stride, padding="SAME",
                            dtype=cfg.dtype, rngs=rngs)

        self.stem_conv1 = conv(in_channels, cfg.stem_width, 2)
        self.stem_norm = nnx.BatchNorm(cfg.stem_width, momentum=cfg.bn_momentum,
                                       epsilon=cfg.bn_epsilon, dtype=cfg.dtype, rngs=rngs)
        self.stem_conv2 = conv(cfg.stem_width, cfg.stem_width, 1)
        rates = np.linspace(0.0, cfg.stochastic_depth, sum(cfg.depths)).tolist()
        blocks, c_in = [], cfg.stem_width
        for s, (c_out, depth) in enumerate(zip(cfg.channels, cfg.depths)):
            for i in range(depth):
                blocks.append(MaxViTBlock(
                    c_in, c_out, stride=2 if i == 0 else 1, window=cfg.window[s],
                    grid=cfg.grid[s], drop_path_rate=rates[len(blocks)], cfg=cfg, rngs=rngs))
                c_in = c_out
        self.blocks = nnx.List(blocks)
        hidden = cfg.head_hidden_size or cfg.channels[-1]
        self.head_norm = LayerNorm(cfg.channels[-1], epsilon=cfg.ln_epsilon, rngs=rngs)
        self.pre_logits = nnx.Linear(cfg.channels[-1], hidden, dtype=cfg.dtype, rngs=rngs)
        self.classifier = nnx.Linear(hidden, cfg.num_classes, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, image: Array, *, rng: Array | None = None) -> Array:
        if image.ndim != 4 or image.shape[1:] != self.cfg.image_shape:
            raise ValueError(f"image must be [batch, *{self.cfg.image_shape}] (H, W, C), got "
                             f"shape {image.shape}")
        x = self.stem_conv1(image.astype(self.cfg.dtype))
        x = gelu(self.stem_norm(x, use_running_average=rng is None))
        x = self.stem_conv2(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rng=None if rng is None else jax.random.fold_in(rng, i))
        x = self.head_norm(x.mean(axis=(1, 2)))
        return self.classifier(jnp.tanh(self.pre_logits(x))).astype(jnp.float32)
