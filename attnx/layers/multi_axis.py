"""MaxViT's transformer sub-blocks on channels-last feature maps `[B, H, W, C]`: partition
(block or grid) self-attention with a learned relative position bias, each followed by an MLP,
both pre-LayerNorm residuals:

    x = x + drop_path(proj(attention(qkv(LN(x)))))      attention: multi_axis.block / grid
    x = x + drop_path(W2 gelu(W1 LN(x)))                 hidden width mlp_ratio * C

The query/key/value projection is one Dense `C -> 3C` whose output is read as `[3, N, Hd]`
(q, then k, then v; each C wide, head-major: timm's `head_first=False`, the official layout).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import multi_axis
from attnx.layers.mbconv import drop_path, gelu
from attnx.layers.norm import LayerNorm

Array = jax.Array

PARTITIONS = ("block", "grid")


class PartitionAttention(nnx.Module):
    """Self-attention inside P x P partitions: `[B, H, W, C] -> [B, H, W, C]`.

    Args:
      channels: C (a multiple of head_dim; N = C / head_dim heads).
      partition: 'block' (contiguous P x P windows) or 'grid' (P x P tokens spaced H/P apart).
      size: P.
      head_dim: Hd.
    """

    def __init__(self, channels: int, partition: str, size: int, *, head_dim: int = 32,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
        if channels % head_dim:
            raise ValueError(f"head_dim={head_dim} must divide the channels ({channels})")
        self.partition, self.size = partition, size
        self.num_heads, self.head_dim = channels // head_dim, head_dim
        self.qkv = nnx.Linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        init = nnx.initializers.truncated_normal(0.02)
        self.bias_table = nnx.Param(init(rngs.params(), (self.num_heads, 2 * size - 1,
                                                         2 * size - 1)))

    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        qkv = self.qkv(x.reshape(-1, c)).reshape(b, h, w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        table = self.bias_table[...]
        if self.partition == "block":
            out = multi_axis.block_attention(q, k, v, window=self.size, bias_table=table)
        else:
            out = multi_axis.grid_attention(q, k, v, grid=self.size, bias_table=table)
        return self.proj(out.reshape(-1, c)).reshape(b, h, w, c)


class PartitionBlock(nnx.Module):
    """`[B, H, W, C] -> [B, H, W, C]`: pre-LN partition attention, then a pre-LN MLP.

    Args:
      channels: C.
      partition, size, head_dim: as `PartitionAttention`.
      mlp_ratio: MLP hidden width = mlp_ratio * C.
      drop_path_rate: stochastic depth of both residual branches.
      ln_epsilon: LayerNorm epsilon.
    """

    def __init__(self, channels: int, partition: str, size: int, *, head_dim: int = 32,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, ln_epsilon: float = 1e-5,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.drop_path_rate = drop_path_rate
        self.attention_norm = LayerNorm(channels, epsilon=ln_epsilon, rngs=rngs)
        self.attention = PartitionAttention(channels, partition, size, head_dim=head_dim,
                                            dtype=dtype, rngs=rngs)
        hidden = int(round(channels * mlp_ratio))
        self.mlp_norm = LayerNorm(channels, epsilon=ln_epsilon, rngs=rngs)
        self.mlp_in = nnx.Linear(channels, hidden, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(hidden, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, *, rng: Array | None = None) -> Array:
        rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
        x = x + drop_path(self.attention(self.attention_norm(x)), self.drop_path_rate, rngs[0])
        c = x.shape[-1]
        y = self.mlp_out(gelu(self.mlp_in(self.mlp_norm(x).reshape(-1, c)))).reshape(x.shape)
        return x + drop_path(y, self.drop_path_rate, rngs[1])
