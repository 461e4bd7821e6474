"""Cross-attention between two sequences: queries from one modality, keys and values from another.

    q [B, Tq, N, H] (the query modality), k, v [B, Tk, N, H] (the key/value modality)
    -> [B, Tq, N, H]

Each side has its own padding mask (`q_mask [B, Tq]`, `kv_mask [B, Tk]`, True = real token); the
pattern is their outer product, optionally narrowed by a `pair_mask [B, Tq, Tk]` (e.g. Flamingo's
"only the most recent media"). A query whose keys are all masked, and every padded query, returns
zeros. The attention itself is any registered 'sequence' mechanism that supports Tq != Tk
(`registry.Mechanism.supports_cross_length`: dense and flash); a `pair_mask` needs one that
takes a full mask (mask kind 'full': dense). `pattern` is the dense `[B, N, Tq, Tk]` equivalent, so
`cross_attention(...) == dense.attention(q, k, v, mask=pattern(...))` on the real query rows.

This is not a registry entry of its own: it routes to one (the co-attention, gated
cross-attention and Perceiver modules in `attnx/layers/cross.py` call it).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from attnx.attention import registry

Array = jax.Array


def cross_mechanisms(pair_mask: bool = False) -> list[str]:
    """The registered mechanisms `cross_attention` can run (those taking a `pair_mask` if asked)."""
    entries = [registry.get(name) for name in registry.names("sequence")]
    return [e.name for e in entries
            if e.supports_cross_length and (not pair_mask or e.mask_kind == "full")]


def check_mechanism(mechanism: str, *, pair_mask: bool = False) -> registry.Mechanism:
    """The registry entry of `mechanism`; ValueError unless it can attend across modalities."""
    entry = registry.get(mechanism)
    if entry.layout != "sequence" or not entry.supports_cross_length:
        raise ValueError(
            f"mechanism={mechanism!r} cannot attend from one modality to another: it does not "
            f"support queries and keys of different lengths (Tq != Tk); cross-attention "
            f"mechanisms: {cross_mechanisms()}")
    if pair_mask and entry.mask_kind != "full":
        raise ValueError(
            f"pair_mask needs a mechanism that takes a full [B, Tq, Tk] mask; mechanism="
            f"{mechanism!r} takes a key padding mask only; use one of {cross_mechanisms(True)}")
    return entry


def check_inputs(q: Array, k: Array, v: Array, q_mask: Array | None, kv_mask: Array | None,
                 pair_mask: Array | None = None) -> None:
    """ValueError, naming the modality and the argument, unless the shapes fit together."""
    for name, x, side in (("q", q, "query"), ("k", k, "key/value"), ("v", v, "key/value")):
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} (the {side} modality) must be [batch, length, heads, "
                             f"head_dim], got shape {jnp.shape(x)}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v (the key/value modality) must agree in batch, length and "
                         f"heads: k {k.shape}, v {v.shape}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(f"q (the query modality) {q.shape} and k (the key/value modality) "
                         f"{k.shape} must agree in batch, heads and head_dim")
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    for name, mask, side, want in (("q_mask", q_mask, "the query modality", (b, tq)),
                                   ("kv_mask", kv_mask, "the key/value modality", (b, tk)),
                                   ("pair_mask", pair_mask, "query and key/value pairs",
                                    (b, tq, tk))):
        if mask is not None and tuple(jnp.shape(mask)) != want:
            raise ValueError(f"{name} ({side}) must be {want}, got shape "
                             f"{tuple(jnp.shape(mask))}")


def _pair_pattern(b: int, tq: int, tk: int, q_mask: Array | None, kv_mask: Array | None,
                  pair_mask: Array | None) -> Array:
    """The boolean `[B, 1, Tq, Tk]` pattern: q_mask x kv_mask, and pair_mask."""
    allowed = jnp.ones((b, tq, tk), bool)
    if q_mask is not None:
        allowed = allowed & q_mask.astype(bool)[:, :, None]
    if kv_mask is not None:
        allowed = allowed & kv_mask.astype(bool)[:, None, :]
    if pair_mask is not None:
        allowed = allowed & pair_mask.astype(bool)
    return allowed[:, None]


def cross_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    q_mask: Array | None = None,
    kv_mask: Array | None = None,
    pair_mask: Array | None = None,
    mechanism: str = "dense",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    **options: Any,
) -> Array:
    """Attention from one modality's queries to another's keys and values.

    Args:
      q: `[B, Tq, N, H]` queries (the query modality).
      k, v: `[B, Tk, N, H]` keys and values (the key/value modality).
      q_mask: `[B, Tq]`, True = real query; padded queries return zeros.
      kv_mask: `[B, Tk]`, True = real key.
      pair_mask: `[B, Tq, Tk]`, True = query i may see key j (mechanisms of mask kind 'full').
      mechanism: a registry name with `supports_cross_length` ('dense', 'flash').
      dropout_rate, dropout_rng: attention dropout, where the mechanism has it.
      options: the mechanism's options (e.g. flash's `block_q`, `implementation`).

    Returns:
      `[B, Tq, N, H]` in q's dtype; zero rows where a query is padded or sees no key.
    """
    entry = check_mechanism(mechanism, pair_mask=pair_mask is not None)
    entry.check_options(options)
    check_inputs(q, k, v, q_mask, kv_mask, pair_mask)
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    if entry.key_padding_mask:
        # The mechanism masks keys; padded queries are zeroed below.
        mask = kv_mask
    else:
        mask = _pair_pattern(b, tq, tk, q_mask, kv_mask, pair_mask)
    out = entry.fn(q, k, v, mask=mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                   **options)
    if q_mask is not None:
        out = jnp.where(q_mask.astype(bool)[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out


def pattern(q: Array, k: Array, *, q_mask: Array | None = None, kv_mask: Array | None = None,
            pair_mask: Array | None = None, **unused_options: Any) -> Array:
    """The boolean `[B, N, Tq, Tk]` pattern `cross_attention` implements for these inputs."""
    b, tq, n, _ = q.shape
    tk = k.shape[1]
    allowed = _pair_pattern(b, tq, tk, q_mask, kv_mask, pair_mask)
    return jnp.broadcast_to(allowed, (b, n, tq, tk))
