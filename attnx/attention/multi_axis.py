"""MaxViT multi-axis attention: block (local) and grid (dilated global) attention on feature maps.

Layout (the registry's 'image' layout): q, k, v are `[B, H, W, N, Hd]`, a feature map of H x W
tokens with N heads of Hd features; the output has q's shape. Tokens are numbered in raster order
(token t = h * W + w) wherever a pattern or bias over the H*W tokens is drawn.

- Block attention cuts the map into contiguous P x P windows (`block_partition`) and attends
  inside each window.
- Grid attention cuts it into G x G groups whose tokens are spaced H/G (and W/G) apart
  (`grid_partition`; G is tokens per group, as in the paper) and attends inside each group: token
  (h, w) belongs to group (h mod H/G, w mod W/G) and sits at (h // (H/G), w // (W/G)) inside it.

Inside a partition of P x P tokens (P = window or grid), tokens are in raster order and the
learned relative position bias is a table `[N, 2P-1, 2P-1]` indexed key minus query: the bias of
query (i, j) for key (x, y) is `table[:, x - i + P - 1, y - j + P - 1]` (DESIGN.md). For grid
attention (i, j), (x, y) are the tokens' coordinates inside their group, as the official code
runs the same attention on grid-partitioned groups. `resize_bias_table` bilinearly resizes a
table for a larger partition (fine-tuning at a higher resolution).

Softmax runs in float32 whatever the input dtype (`dense.attention` inside each partition).
`pattern` / `bias` give the dense equivalents over the H*W raster tokens: block attention equals
`dense.attention(q_flat, k_flat, v_flat, mask=block_pattern(...), bias=block_bias(...))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attnx.attention import _common, dense

Array = jax.Array


# ----------------------------------------------------------------------------- partitions


def _check_divides(name: str, size: int, height: int, width: int) -> None:
    """ValueError naming H, W and the partition size unless it divides both."""
    _common.check_int(name, size)
    if height % size or width % size:
        raise ValueError(f"{name}={size} must divide the feature map's height H={height} and "
                         f"width W={width}")


def block_partition(x: Array, window: int) -> Array:
    """`[B, H, W, ...]` -> windows `[B * H/P * W/P, P*P, ...]` (P = window): contiguous P x P
    windows in raster order of windows, the tokens of a window in raster order."""
    b, h, w, *rest = x.shape
    _check_divides("window", window, h, w)
    p = window
    x = x.reshape(b, h // p, p, w // p, p, *rest)
    x = jnp.moveaxis(x, 2, 3)  # [B, H/P, W/P, P, P, ...]
    return x.reshape(b * (h // p) * (w // p), p * p, *rest)


def block_unpartition(windows: Array, window: int, height: int, width: int) -> Array:
    """The inverse of `block_partition`: `[B * H/P * W/P, P*P, ...]` -> `[B, H, W, ...]`."""
    _check_divides("window", window, height, width)
    p = window
    n, pp, *rest = windows.shape
    per_image = (height // p) * (width // p)
    if pp != p * p or n % per_image:
        raise ValueError(f"windows must be [B * {height // p} * {width // p}, {p * p}, ...] for "
                         f"window={p}, H={height}, W={width}; got shape {windows.shape}")
    x = windows.reshape(n // per_image, height // p, width // p, p, p, *rest)
    x = jnp.moveaxis(x, 3, 2)  # [B, H/P, P, W/P, P, ...]
    return x.reshape(n // per_image, height, width, *rest)


def grid_partition(x: Array, grid: int) -> Array:
    """`[B, H, W, ...]` -> groups `[B * H/G * W/G, G*G, ...]` (G = grid): group (a, b) holds the
    tokens (i * H/G + a, j * W/G + b), i, j < G, in raster order of (i, j)."""
    b, h, w, *rest = x.shape
    _check_divides("grid", grid, h, w)
    g = grid
    x = x.reshape(b, g, h // g, g, w // g, *rest)  # [B, i, a, j, b, ...]
    x = jnp.moveaxis(x, (2, 4), (1, 2))  # [B, a, b, i, j, ...]
    return x.reshape(b * (h // g) * (w // g), g * g, *rest)


def grid_unpartition(groups: Array, grid: int, height: int, width: int) -> Array:
    """The inverse of `grid_partition`: `[B * H/G * W/G, G*G, ...]` -> `[B, H, W, ...]`."""
    _check_divides("grid", grid, height, width)
    g = grid
    n, gg, *rest = groups.shape
    per_image = (height // g) * (width // g)
    if gg != g * g or n % per_image:
        raise ValueError(f"groups must be [B * {height // g} * {width // g}, {g * g}, ...] for "
                         f"grid={g}, H={height}, W={width}; got shape {groups.shape}")
    x = groups.reshape(n // per_image, height // g, width // g, g, g, *rest)
    x = jnp.moveaxis(x, (1, 2), (2, 4))  # [B, i, a, j, b, ...]
    return x.reshape(n // per_image, height, width, *rest)


# ----------------------------------------------------------------------------- relative bias


def relative_position_bias(table: Array, size: int) -> Array:
    """The bias `[N, P*P, P*P]` (P = size) of a table `[N, 2P-1, 2P-1]` over a P x P partition in
    raster order: bias[:, i * P + j, x * P + y] = table[:, x - i + P - 1, y - j + P - 1]."""
    check_bias_table(table, size)
    offsets = np.arange(size)[None, :] - np.arange(size)[:, None] + size - 1  # [query, key]
    rows = offsets[:, None, :, None]  # (i, ., x, .)
    cols = offsets[None, :, None, :]  # (., j, ., y)
    bias = table[:, rows, cols]  # [N, P, P, P, P] as (i, j, x, y)
    return bias.reshape(table.shape[0], size * size, size * size)


def check_bias_table(table: Array, size: int) -> None:
    """ValueError unless `table` is `[N, 2P-1, 2P-1]` for partition size P = `size`."""
    if table.ndim != 3 or table.shape[1:] != (2 * size - 1, 2 * size - 1):
        raise ValueError(f"bias_table must be [heads, {2 * size - 1}, {2 * size - 1}] for a "
                         f"partition of {size} x {size} tokens, got shape {table.shape}; "
                         "resize_bias_table adapts a table to another partition size")


def resize_bias_table(table: Array, size: int) -> Array:
    """Bilinearly resize a table `[N, 2P'-1, 2P'-1]` to `[N, 2P-1, 2P-1]` (P = size), the
    official code's way of reusing a bias for a larger window at a higher resolution."""
    if table.ndim != 3:
        raise ValueError(f"bias_table must be [heads, 2P-1, 2P-1], got shape {table.shape}")
    _common.check_int("size", size)
    shape = (table.shape[0], 2 * size - 1, 2 * size - 1)
    if table.shape == shape:
        return table
    return jax.image.resize(table, shape, method="bilinear").astype(table.dtype)


# ----------------------------------------------------------------------------- attention


def _check_inputs(q: Array, k: Array, v: Array, mask: Array | None, causal: bool) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 5:
            raise ValueError(f"{name} must be a feature map [batch, height, width, heads, "
                             f"head_dim], got shape {x.shape}")
    if q.shape[:4] != k.shape[:4] or k.shape[:4] != v.shape[:4]:
        raise ValueError("q, k and v must agree in batch, height, width and heads: "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[4] != k.shape[4]:
        raise ValueError(f"q and k must have the same head_dim: q {q.shape[4]}, k {k.shape[4]}")
    if mask is not None:
        raise ValueError("mask must be None: multi-axis attention attends within complete "
                         "feature maps and takes no mask")
    if causal:
        raise ValueError("causal must be False: multi-axis attention has no token order")


def _partitioned_attention(q, k, v, *, size, partition, unpartition, bias_table, scale,
                           dropout_rate, dropout_rng) -> Array:
    """Attention inside each partition of `size` x `size` tokens, back in `[B, H, W, N, Hd]`."""
    height, width = q.shape[1:3]
    qp, kp, vp = (partition(x, size) for x in (q, k, v))  # [M, P*P, N, Hd]
    bias = None
    if bias_table is not None:
        bias = relative_position_bias(bias_table, size)[None]  # [1, N, P*P, P*P]
    out = dense.attention(qp, kp, vp, bias=bias, scale=scale, dropout_rate=dropout_rate,
                          dropout_rng=dropout_rng)
    return unpartition(out, size, height, width)


def block_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    window: int,
    bias_table: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Multi-head attention inside contiguous `window` x `window` blocks.

    Args:
      q, k, v: `[B, H, W, N, Hd]`; `window` must divide H and W.
      window: P, the block side in tokens.
      bias_table: `[N, 2P-1, 2P-1]` relative position bias, indexed key minus query.
      mask, causal: must be None / False (the contract's arguments; feature maps are whole).
      scale: logit scale, default `1/sqrt(Hd)`.
      dropout_rate, dropout_rng: attention dropout on the weights.

    Returns:
      `[B, H, W, N, Hd]` in q's dtype.
    """
    _check_inputs(q, k, v, mask, causal)
    return _partitioned_attention(
        q, k, v, size=window, partition=block_partition, unpartition=block_unpartition,
        bias_table=bias_table, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


def grid_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    grid: int,
    bias_table: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Multi-head attention inside `grid` x `grid` groups of tokens spaced H/G, W/G apart.

    Args:
      q, k, v: `[B, H, W, N, Hd]`; `grid` must divide H and W.
      grid: G, tokens per group along each axis.
      bias_table: `[N, 2G-1, 2G-1]` relative position bias over the tokens' coordinates inside
        their group, indexed key minus query.
      mask, causal: must be None / False.
      scale: logit scale, default `1/sqrt(Hd)`.
      dropout_rate, dropout_rng: attention dropout on the weights.

    Returns:
      `[B, H, W, N, Hd]` in q's dtype.
    """
    _check_inputs(q, k, v, mask, causal)
    return _partitioned_attention(
        q, k, v, size=grid, partition=grid_partition, unpartition=grid_unpartition,
        bias_table=bias_table, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


# ----------------------------------------------------------------------------- dense equivalents


def _coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column `[H*W]` of each raster token."""
    t = np.arange(height * width)
    return t // width, t % width


def _block_position(height: int, width: int, window: int):
    """(partition id, row inside, column inside) `[H*W]` of each raster token's block."""
    _check_divides("window", window, height, width)
    r, c = _coordinates(height, width)
    return (r // window) * (width // window) + c // window, r % window, c % window


def _grid_position(height: int, width: int, grid: int):
    """(partition id, row inside, column inside) `[H*W]` of each raster token's grid group."""
    _check_divides("grid", grid, height, width)
    sh, sw = height // grid, width // grid
    r, c = _coordinates(height, width)
    return (r % sh) * sw + c % sw, r // sh, c // sw


def _pattern(q: Array, position) -> Array:
    b, h, w, n, _ = q.shape
    group, _, _ = position
    same = jnp.asarray(group[:, None] == group[None, :])
    return jnp.broadcast_to(same, (b, n, h * w, h * w))


def _bias(bias_table: Array, size: int, position) -> Array:
    check_bias_table(bias_table, size)
    _, rows, cols = position
    bias = bias_table[:, rows[None, :] - rows[:, None] + size - 1,
                      cols[None, :] - cols[:, None] + size - 1]  # [N, Tq, Tk]
    return bias


def block_pattern(q: Array, k: Array, *, window: int, **unused_options) -> Array:
    """Boolean `[B, N, H*W, H*W]` over raster tokens: True where both tokens share a block."""
    return _pattern(q, _block_position(q.shape[1], q.shape[2], window))


def grid_pattern(q: Array, k: Array, *, grid: int, **unused_options) -> Array:
    """Boolean `[B, N, H*W, H*W]` over raster tokens: True where both share a grid group."""
    return _pattern(q, _grid_position(q.shape[1], q.shape[2], grid))


def block_bias(q: Array, k: Array, *, window: int, bias_table: Array | None = None,
               **unused_options) -> Array | None:
    """The relative position bias `[N, H*W, H*W]` block attention adds over raster tokens
    (meaningful inside `block_pattern`), or None without a table."""
    if bias_table is None:
        return None
    return _bias(bias_table, window, _block_position(q.shape[1], q.shape[2], window))


def grid_bias(q: Array, k: Array, *, grid: int, bias_table: Array | None = None,
              **unused_options) -> Array | None:
    """The relative position bias `[N, H*W, H*W]` grid attention adds over raster tokens
    (meaningful inside `grid_pattern`), or None without a table."""
    if bias_table is None:
        return None
    return _bias(bias_table, grid, _grid_position(q.shape[1], q.shape[2], grid))
