"""Pooling of token features into one vector per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_mean(x: Array, mask: Array) -> Array:
    """Mean over the real tokens: x `[B, T, ..., D]`, mask `[B, T]` (True = real; every token of
    a real position counts, e.g. the spatial tokens of a real frame) -> `[B, D]`. A row without a
    real token gives zeros."""
    b, d = x.shape[0], x.shape[-1]
    per_position = x[0, 0].size // d  # tokens of one position (1 for `[B, T, D]`)
    tokens = x.reshape(b, -1, d)
    weights = jnp.repeat(mask.astype(x.dtype), per_position, axis=1)[..., None]
    return (tokens * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
