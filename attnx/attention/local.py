"""Chunked local attention (Reformer's `LocalSelfAttention`).

The sequence is cut into chunks of `chunk_len`; every query attends to the keys of its own chunk
and of `chunks_before` / `chunks_after` neighbouring chunks. Unlike HF there is no wrap-around:
the first chunk has no look-back and the last no look-ahead. Keys are scaled by 1/sqrt(head_dim).
A length that is not a multiple of `chunk_len` is padded and masked internally.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from attnx.attention import _common, dense

Array = jax.Array


def _check_local_args(
    q: Array,
    k: Array,
    v: Array,
    chunk_len: int,
    chunks_before: int,
    chunks_after: int,
    mask: Array | None,
) -> None:
    dense.check_qkv(q, k, v)
    if q.shape[1] != k.shape[1]:
        raise ValueError(
            f"local attention is self-attention: q and k lengths differ, {q.shape} vs {k.shape}")
    _common.check_int("chunk_len", chunk_len, 1)
    _common.check_int("chunks_before", chunks_before, 0)
    _common.check_int("chunks_after", chunks_after, 0)
    _common.check_key_padding_mask(mask, q.shape[0], q.shape[1])


def local_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    causal: bool = False,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    parts: int | None = None,
) -> Array:
    """Chunked local self-attention.

    Args:
      q, k: `[B, T, N, H]`; v: `[B, T, N, Hv]`.
      chunk_len: chunk length; T need not be a multiple of it.
      chunks_before, chunks_after: neighbouring chunks each chunk attends to (no wrap-around).
      causal: query i sees keys j <= i.
      mask: key padding mask `[B, T]`, True = real token.
      dropout_rate, dropout_rng: attention dropout on the weights.
      parts: the B * N (batch x head) groups are computed in this many independent slices (a
        divisor of B * N); None: `_common.default_parts` (on CPU one per core, so XLA runs them
        side by side; 1 on accelerators). The result does not depend on it.

    Returns:
      `[B, T, N, Hv]` in q's dtype; a query with no key to attend to gets zeros.
    """
    _check_local_args(q, k, v, chunk_len, chunks_before, chunks_after, mask)
    b, t, n, h = q.shape
    groups = b * n

    # The attention runs on rank-3 arrays [G*C, L, ...] (G = B*N groups of C chunks): XLA:CPU
    # fuses multiply-reduce patterns of higher rank (with a leading 1) into very slow loops.
    def per_group(x: Array) -> Array:  # [B, T, N, ...] -> [G, T, ...]
        return jnp.swapaxes(x, 1, 2).reshape((groups, t) + x.shape[3:])

    _common.check_dropout(dropout_rate, dropout_rng)
    real = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)

    attend = functools.partial(_attend_groups, chunk_len=chunk_len, chunks_before=chunks_before,
                               chunks_after=chunks_after, causal=causal,
                               dropout_rate=dropout_rate)
    out = _common.in_parts(attend, parts, per_group(q), per_group(k), per_group(v),
                           jnp.repeat(real, n, axis=0), dropout_rng=dropout_rng)  # [G, T, Hv]
    return jnp.swapaxes(out.reshape(b, n, t, v.shape[-1]), 1, 2).astype(q.dtype)


def _attend_groups(dropout_rng: jax.Array | None, q: Array, k: Array, v: Array, real: Array, *,
                   chunk_len: int, chunks_before: int, chunks_after: int, causal: bool,
                   dropout_rate: float) -> Array:
    """Local attention of g independent groups: q, k `[g, T, H]`, v `[g, T, Hv]`, key validity
    `real` `[g, T]` -> `[g, T, Hv]` float32."""
    g, t, h = q.shape
    t_pad = _common.round_up(t, chunk_len)
    n_chunks = t_pad // chunk_len

    def chunks(x: Array) -> Array:
        """[g, T, ...] -> [g, C, L, ...], zeros (False) in the internal padding."""
        x = _common.pad_axis(x, t_pad)
        return x.reshape((x.shape[0], n_chunks, chunk_len) + x.shape[2:])

    def neighbours(x: Array) -> Array:
        """[g, T, ...] -> [g*C, W*L, ...]: each chunk's window of keys, no wrap-around."""
        x = _common.look_around(chunks(x), chunks_before, chunks_after, wrap=False)
        return x.reshape((-1,) + x.shape[2:])

    q_c = chunks(q).reshape(-1, chunk_len, h)  # [g*C, L, H]
    k_w = neighbours(k * jnp.asarray(1.0 / math.sqrt(h), k.dtype))  # [g*C, W*L, H]
    v_w = neighbours(v)
    # Scores are laid out keys first, [g*C, W*L, L] (softmax over axis 1): XLA:CPU runs both
    # batched matmuls and the softmax's reductions faster this way than with [g*C, L, W*L]
    # (10-23% forward + backward at 4K-8K tokens: experiments/efficiency).
    logits = jnp.einsum("ckh,cqh->ckq", k_w, q_c, preferred_element_type=jnp.float32)

    # Key validity: inside the sequence (not an added chunk or internal padding) and a real token.
    allowed = neighbours(real)[:, :, None]  # [g*C, W*L, 1]
    if causal:
        positions = jnp.arange(t)[None]
        q_pos = chunks(positions).reshape(n_chunks, chunk_len)
        k_pos = neighbours(positions)  # [C, W*L]
        causal_ok = k_pos[:, :, None] <= q_pos[:, None, :]
        allowed = allowed & jnp.tile(causal_ok, (g, 1, 1))
    weights = _common.masked_softmax(logits, allowed, axis=1)
    weights = dense.dropout_weights(weights, dropout_rate, dropout_rng)
    out = jnp.einsum("ckq,ckh->cqh", weights.astype(v.dtype), v_w,
                     preferred_element_type=jnp.float32)
    return out.reshape(g, t_pad, v.shape[-1])[:, :t]


def pattern(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    causal: bool = False,
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    **unused_options,
) -> Array:
    """The chunked band `[B, N, T, T]` local attention implements (with causality and padding)."""
    del unused_options
    _check_local_args(q, k, k, chunk_len, chunks_before, chunks_after, mask)
    b, t, n, _ = q.shape
    chunk = jnp.arange(t) // chunk_len
    offset = chunk[:, None] - chunk[None, :]  # query chunk - key chunk
    band = (offset <= chunks_before) & (offset >= -chunks_after)
    full = dense.combine_masks(
        band,
        dense.causal_pattern(t, t) if causal else None,
        None if mask is None else dense.key_padding_pattern(mask),
    )
    return jnp.broadcast_to(full, (b, n, t, t))


def prefill(
    q: Array,
    k: Array,
    v: Array,
    *,
    max_len: int,
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    **unused_options,
) -> tuple[Array, dict[str, Array]]:
    """Causal local attention over a prompt q, k, v `[B, P, N, H]`, and the decoding cache of
    `max_len` positions that `decode_step` continues from: (`[B, P, N, Hv]`, cache)."""
    del unused_options
    out = local_attention(q, k, v, chunk_len=chunk_len, chunks_before=chunks_before,
                          chunks_after=chunks_after, causal=True)
    return out, _common.prefix_cache(k, v, max_len)


def decode_step(
    q: Array,
    k: Array,
    v: Array,
    cache: dict[str, Array],
    *,
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    **unused_options,
) -> tuple[Array, dict[str, Array]]:
    """Causal local attention of one new token after the cached ones (incremental decoding).

    q, k, v `[B, 1, N, H]` are the token at position `cache['index']`. It attends to the keys of
    its own chunk up to itself and of the `chunks_before` chunks before it (the keys after it are
    in the future, so `chunks_after` plays no part): exactly the last row of
    `local_attention(..., causal=True)` over positions 0 .. index. Only that window of
    (chunks_before + 1) * chunk_len cached keys is read. Returns (`[B, 1, N, Hv]` in q's dtype,
    the cache with the token appended).
    """
    del chunks_after, unused_options
    if q.ndim != 4 or q.shape[1] != 1:
        raise ValueError(f"q must be one token [batch, 1, heads, head_dim], got shape {q.shape}")
    _common.check_int("chunk_len", chunk_len, 1)
    _common.check_int("chunks_before", chunks_before, 0)
    cache = _common.append_to_cache(cache, k, v)
    index, max_len = cache["index"], cache["k"].shape[1]
    width = min(max_len, (chunks_before + 1) * chunk_len)
    first = (index // chunk_len - chunks_before) * chunk_len  # the window's first position
    start = jnp.clip(first, 0, max_len - width)
    keys = jax.lax.dynamic_slice_in_dim(cache["k"], start, width, axis=1)  # [B, W, N, H]
    values = jax.lax.dynamic_slice_in_dim(cache["v"], start, width, axis=1)
    positions = start + jnp.arange(width)
    allowed = (positions >= first) & (positions <= index)  # [W]
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), keys.dtype)
    logits = jnp.einsum("bqnh,bknh->bnqk", q, keys * scale, preferred_element_type=jnp.float32)
    weights = _common.masked_softmax(logits, allowed[None, None, None, :])
    out = jnp.einsum("bnqk,bknh->bqnh", weights.astype(values.dtype), values,
                     preferred_element_type=jnp.float32)
    return out.astype(q.dtype), {**cache, "index": index + 1}
