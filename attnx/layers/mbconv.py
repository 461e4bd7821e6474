"""MBConv (the inverted-bottleneck convolution of MobileNetV2 / EfficientNet, as MaxViT uses it),
squeeze-excitation and stochastic depth, on channels-last feature maps `[B, H, W, C]`.

MBConv, pre-norm (MaxViT's form, timm's `MbConvBlock` with the official `_tf_` settings):

    shortcut = x                           (stride 1, C_in == C_out)
             | conv1x1(avg_pool2(x))       (stride 2; the 1x1 conv only when C_in != C_out)
    y = BN(x) -> conv1x1 to 4 C_out -> BN -> GELU -> depthwise 3x3 (stride s) -> BN -> GELU
        -> squeeze-excitation -> conv1x1 to C_out (with bias)
    out = shortcut + drop_path(y)

Convolutions pad 'SAME' as TensorFlow does (a stride-2 3x3 convolution of an even map pads one
row and column at the end). GELU is the tanh approximation, BatchNorm epsilon 1e-3, as the
official model. BatchNorm uses batch statistics (and updates its running averages) when `rng` is
given, its running averages when `rng` is None (evaluation).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def gelu(x: Array) -> Array:
    """GELU, tanh approximation (the official MaxViT's and timm `_tf_`'s 'gelu_tanh')."""
    return jax.nn.gelu(x, approximate=True)


def drop_path(x: Array, rate: float, rng: Array | None) -> Array:
    """Stochastic depth: each example's residual branch `x [B, ...]` is dropped with probability
    `rate` and the kept ones scaled by 1 / (1 - rate); identity when `rng` is None or rate 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class SqueezeExcite(nnx.Module):
    """`x [B, H, W, C] -> x * sigmoid(W2 silu(W1 mean_hw(x)))`, reduced width `reduced`."""

    def __init__(self, channels: int, reduced: int, *, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.reduce = nnx.Linear(channels, reduced, dtype=dtype, rngs=rngs)
        self.expand = nnx.Linear(reduced, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        gate = self.expand(jax.nn.silu(self.reduce(x.mean(axis=(1, 2)))))
        return x * jax.nn.sigmoid(gate)[:, None, None, :]


class MBConv(nnx.Module):
    """Pre-norm MBConv: `[B, H, W, C_in] -> [B, H/s, W/s, C_out]` (see the module docstring).

    Args:
      in_channels, out_channels: C_in, C_out.
      stride: 1 or 2 (the depthwise convolution's stride; the shortcut pools by 2).
      expand_ratio: hidden width = expand_ratio * C_out.
      se_ratio: squeeze-excitation width = se_ratio * C_out.
      drop_path_rate: stochastic depth of the residual branch.
      bn_momentum, bn_epsilon: BatchNorm settings.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 expand_ratio: float = 4.0, se_ratio: float = 0.25, drop_path_rate: float = 0.0,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 MBConv keeps its width: in_channels={in_channels} "
                             f"must equal out_channels={out_channels}")
        hidden = int(round(out_channels * expand_ratio))
        self.stride, self.drop_path_rate = stride, drop_path_rate

        def bn(c: int) -> nnx.BatchNorm:
            return nnx.BatchNorm(c, momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype,
                                 rngs=rngs)

        def conv(c_in: int, c_out: int, kernel: int = 1, **kw) -> nnx.Conv:
            return nnx.Conv(c_in, c_out, (kernel, kernel), padding="SAME", dtype=dtype,
                            rngs=rngs, **kw)

        self.shortcut_proj = (conv(in_channels, out_channels)
                              if in_channels != out_channels else None)
        self.pre_norm = bn(in_channels)
        self.expand = conv(in_channels, hidden, use_bias=False)
        self.expand_norm = bn(hidden)
        self.depthwise = conv(hidden, hidden, 3, strides=stride, feature_group_count=hidden,
                              use_bias=False)
        self.depthwise_norm = bn(hidden)
        self.se = SqueezeExcite(hidden, int(se_ratio * out_channels), dtype=dtype, rngs=rngs)
        self.project = conv(hidden, out_channels)

    def __call__(self, x: Array, *, rng: Array | None = None) -> Array:
        frozen = rng is None
        shortcut = x
        if self.stride == 2:
            shortcut = nnx.avg_pool(shortcut, (2, 2), strides=(2, 2))
        if self.shortcut_proj is not None:
            shortcut = self.shortcut_proj(shortcut)
        y = self.pre_norm(x, use_running_average=frozen)
        y = gelu(self.expand_norm(self.expand(y), use_running_average=frozen))
        y = gelu(self.depthwise_norm(self.depthwise(y), use_running_average=frozen))
        y = self.project(self.se(y))
        return shortcut + drop_path(y, self.drop_path_rate, rng)
