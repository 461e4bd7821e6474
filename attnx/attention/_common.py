"""Checks and pieces several attention mechanisms share: argument checks, padding, masked softmax,
neighbour chunks. Each mechanism file keeps only what is its own.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Logit given to masked pairs before the softmax. Finite, so that fully masked rows stay NaN-free;
# those rows are zeroed explicitly afterwards.
MASK_VALUE = -1e30


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """`value` as an int; ValueError naming `name` unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_key_padding_mask(mask: Array | None, batch: int, length: int, name: str = "mask") -> None:
    """ValueError unless `mask` is None or a key padding mask `[batch, length]` (True = real)."""
    if mask is not None and tuple(jnp.shape(mask)) != (batch, length):
        raise ValueError(f"{name} must be a key padding mask [batch, length] = {(batch, length)}, "
                         f"got shape {tuple(jnp.shape(mask))}")


def check_dropout(rate: float, rng: jax.Array | None) -> None:
    """ValueError unless `rate` is in [0, 1) and a key is given when `rate > 0`."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    if rate > 0.0 and rng is None:
        raise ValueError("dropout_rng is required when dropout_rate > 0")


def round_up(x: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= x."""
    return -(-x // multiple) * multiple


def pad_axis(x: Array, size: int, axis: int = 1, value: object = 0) -> Array:
    """Pad `axis` of x at the end with `value` up to `size` (default: the length axis of BT...)."""
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def masked_softmax(logits: Array, allowed: Array | None, axis: int = -1) -> Array:
    """Softmax over `axis` (the keys) restricted to `allowed` (broadcastable to logits); a query
    with no allowed key gets zero weights. float32 logits in, float32 weights out."""
    if allowed is None:
        return jax.nn.softmax(logits, axis=axis)
    weights = jax.nn.softmax(jnp.where(allowed, logits, MASK_VALUE), axis=axis)
    return jnp.where(jnp.any(allowed, axis=axis, keepdims=True), weights, 0.0)


def default_parts(groups: int) -> int:
    """Independent slices to compute `groups` (batch x heads) attention groups in: on CPU the
    largest divisor of `groups` not above the cores this process may use, so that XLA:CPU's
    executor runs the slices side by side (it runs each small batched matmul on one thread);
    1 on accelerators, which parallelise inside every op."""
    if jax.default_backend() != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(d for d in range(1, min(groups, cores or 1) + 1) if groups % d == 0)


def in_parts(fn: Callable[..., Array], parts: int | None, *arrays: Array,
             axes: tuple[int, ...] | None = None, out_axis: int = 0,
             what: str = "batch x heads groups",
             dropout_rng: jax.Array | None = None) -> Array:
    """`fn(rng, *slices)` on `parts` equal slices of the arrays (independent computations),
    concatenated along `out_axis` of its results. Array i is sliced along `axes[i]` (default:
    every array along axis 0); `fn` must treat those rows independently. `parts=None`:
    `default_parts`. Each slice gets its own dropout key (`dropout_rng` itself when there is one
    slice, or no key). ValueError naming `what` is sliced unless `parts` divides it."""
    axes = axes or (0,) * len(arrays)
    size = arrays[0].shape[axes[0]]
    parts = default_parts(size) if parts is None else check_int("parts", parts)
    if size % parts:
        raise ValueError(f"parts={parts} must divide the {size} {what}")
    step = size // parts

    def piece(a: Array, axis: int, i: int) -> Array:
        return jax.lax.slice_in_dim(a, i * step, (i + 1) * step, axis=axis)

    def rng(i: int) -> jax.Array | None:
        if dropout_rng is None or parts == 1:
            return dropout_rng
        return jax.random.fold_in(dropout_rng, i)

    outs = [fn(rng(i), *(piece(a, axis, i) for a, axis in zip(arrays, axes)))
            for i in range(parts)]
    return outs[0] if parts == 1 else jnp.concatenate(outs, axis=out_axis)


def look_around(chunks: Array, before: int, after: int, *, wrap: bool) -> Array:
    """Each chunk with its neighbours: `[G, C, L, ...]` -> `[G, C, (before + 1 + after) * L, ...]`,
    chunks c - before, ..., c + after along axis 2. With `wrap` the neighbours of the first and
    last chunks wrap around; without, they are zeros (False)."""
    n_chunks = chunks.shape[1]
    if wrap:
        parts = [jnp.roll(chunks, -offset, axis=1) for offset in range(-before, after + 1)]
    else:
        padded = jnp.pad(chunks, [(0, 0), (before, after)] + [(0, 0)] * (chunks.ndim - 2))
        parts = [padded[:, o : o + n_chunks] for o in range(before + 1 + after)]
    return jnp.concatenate(parts, axis=2)


def prefix_cache(k: Array, v: Array, max_len: int) -> dict[str, Array]:
    """A decoding cache holding the keys and values `[B, P, N, H]` of a prompt, in buffers of
    `max_len` positions: {'k', 'v': `[B, max_len, N, H]`, 'index': P (the next position)}."""
    if not 1 <= k.shape[1] <= max_len:
        raise ValueError(f"the prompt has {k.shape[1]} tokens; the cache holds max_len={max_len}"
                         " (and the prompt needs at least one)")
    return {"k": pad_axis(k, max_len), "v": pad_axis(v, max_len),
            "index": jnp.asarray(k.shape[1], jnp.int32)}


def append_to_cache(cache: dict[str, Array], k: Array, v: Array) -> dict[str, Array]:
    """The cache with new tokens' keys and values `[B, t, N, H]` written from `cache['index']`
    on (the index is not advanced: the caller does, once the tokens are decoded)."""
    index = cache["index"]
    return {**cache,
            "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype),
                                                     index, 1),
            "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype),
                                                     index, 1)}
