"""Dense softmax attention: the reference every other mechanism is tested against.

Layout is that of `jax.nn.dot_product_attention`: q `[B, Tq, N, H]`, k and v `[B, Tk, N, H]`.
Masks are boolean with True = may attend. Softmax runs in float32 whatever the input dtype, and a
query row whose keys are all masked returns zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attnx.attention import _common
from attnx.attention._common import MASK_VALUE  # noqa: F401 (part of dense's API)

Array = jax.Array


def check_qkv(q: Array, k: Array, v: Array) -> None:
    """Raise ValueError unless q, k, v are BTNH arrays that fit together."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, length, heads, head_dim], got shape {x.shape}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree in batch, length and heads: k {k.shape}, v {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k must agree in batch and heads: q {q.shape}, k {k.shape}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head_dim: q {q.shape[3]}, k {k.shape[3]}")


def causal_pattern(tq: int, tk: int) -> Array:
    """Top-left aligned causal pattern `[Tq, Tk]`: query i sees keys j <= i."""
    return jnp.arange(tq)[:, None] >= jnp.arange(tk)[None, :]


def key_padding_pattern(key_mask: Array) -> Array:
    """Key padding mask `[B, Tk]` (True = real token) -> pattern `[B, 1, 1, Tk]`."""
    if key_mask.ndim != 2:
        raise ValueError(f"key padding mask must be [batch, length], got shape {key_mask.shape}")
    return key_mask.astype(bool)[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of the given boolean masks (None entries are ignored); None if all are None."""
    present = [m.astype(bool) for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def _full_mask(mask: Array | None, causal: bool, tq: int, tk: int) -> Array | None:
    if mask is not None and mask.ndim > 4:
        raise ValueError(f"mask must broadcast to [B, N, Tq, Tk], got shape {mask.shape}")
    return combine_masks(mask, causal_pattern(tq, tk) if causal else None)


def attention_weights(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> Array:
    """Softmax attention weights `[B, N, Tq, Tk]` in float32; fully masked rows are zero.

    Args:
      q: `[B, Tq, N, H]` queries.
      k: `[B, Tk, N, H]` keys.
      mask: boolean, broadcastable to `[B, N, Tq, Tk]`; True = may attend.
      bias: additive logit bias broadcastable to `[B, N, Tq, Tk]`.
      causal: if True, query i only sees keys j <= i (top-left aligned).
      scale: logit scale; defaults to `1/sqrt(head_dim)`.
    """
    head_dim = q.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    return _common.masked_softmax(logits, _full_mask(mask, causal, q.shape[1], k.shape[1]))


def dropout_weights(weights: Array, rate: float, rng: jax.Array | None) -> Array:
    """Inverted dropout on attention weights; identity when `rate == 0`."""
    _common.check_dropout(rate, rng)
    if rate == 0.0:
        return weights
    keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
    return jnp.where(keep, weights / (1.0 - rate), 0.0)


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Scaled dot-product attention, the dense oracle.

    Args:
      q: `[B, Tq, N, H]`; k, v: `[B, Tk, N, H]`.
      mask: boolean, broadcastable to `[B, N, Tq, Tk]` (True = may attend).
      bias: additive logit bias broadcastable to `[B, N, Tq, Tk]`.
      causal: query i sees keys j <= i (top-left aligned when Tq != Tk).
      scale: logit scale, default `1/sqrt(H)`.
      dropout_rate, dropout_rng: attention dropout on the weights.

    Returns:
      `[B, Tq, N, H]` in q's dtype.
    """
    check_qkv(q, k, v)
    weights = attention_weights(q, k, mask=mask, bias=bias, causal=causal, scale=scale)
    weights = dropout_weights(weights, dropout_rate, dropout_rng)
    out = jnp.einsum("bnqk,bknh->bqnh", weights, v.astype(jnp.float32))
    return out.astype(q.dtype)


def pattern(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    causal: bool = False,
    **unused_options,
) -> Array:
    """The boolean `[B, N, Tq, Tk]` pattern dense attention implements for these inputs."""
    b, tq, n, _ = q.shape
    tk = k.shape[1]
    full = _full_mask(mask, causal, tq, tk)
    if full is None:
        return jnp.ones((b, n, tq, tk), bool)
    return jnp.broadcast_to(full, (b, n, tq, tk))
