"""Longformer sliding-window + global attention, computed in banded form.

Layout is BTNH (`[batch, length, heads, head_dim]`). The window is one-sided (DESIGN.md): query i
sees key j when |i - j| <= window * dilation and dilation divides i - j. Tokens marked in
`global_mask` attend to every token and every token attends to them; the rows of global tokens use
their own projections `global_qkv=(qg, kg, vg)`, the other rows see global tokens through the
ordinary k and v.

How it is computed, never building a T x T matrix:
- Dilation d splits the sequence into d interleaved subsequences (positions r, r + d, r + 2d, ...);
  a dilated window is an ordinary window of `window` inside each subsequence.
- Each subsequence is padded to whole blocks; a query block attends to the key blocks that cover
  its band (only the past ones when causal) and to the (at most `max_global`) global keys gathered
  per batch row, appended to every block's keys, all in one float32 softmax. Global keys are
  removed from the band so that no pair is counted twice.
- The blocks are processed a chunk at a time in a scan, with a hand-written backward pass that
  recomputes each chunk's weights from the saved log-sum-exp (as flash attention does): only one
  chunk's logits exist at a time and only O(T * H) arrays are kept between the passes.
- Global rows are dense rows over all T keys (G x T, with G = max_global), written over the band
  rows.
Time and memory are O(T * (window + max_global)).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from attnx.attention import _common, dense

Array = jax.Array


def _first_globals(global_mask: Array, max_global: int) -> Array:
    """The first `max_global` marked tokens of each row of `global_mask` `[B, T]`, as `[B, T]`."""
    gm = global_mask.astype(bool)
    return gm & (jnp.cumsum(gm, axis=1) <= max_global)


def _num_globals(global_mask: Array | None, max_global: int | None) -> int:
    """Static number G of global slots per batch row (validated against the mask when concrete)."""
    if global_mask is None:
        return 0
    if max_global is not None:
        _common.check_int("max_global", max_global, 0)
    try:
        counts = np.asarray(global_mask).astype(bool).sum(axis=1)
    except jax.errors.TracerArrayConversionError:
        if max_global is None:
            raise ValueError(
                "max_global (the most global tokens in one batch row) is required when global_mask "
                "is traced, e.g. under jit; pass it as an option"
            ) from None
        return int(max_global)
    most = int(counts.max(initial=0))
    if max_global is None:
        return most
    if most > max_global:
        raise ValueError(
            f"global_mask marks {most} tokens in one row, more than max_global={max_global}"
        )
    return int(max_global)


def _default_block(window: int) -> int:
    """Query block size for a window: the window itself, within [16, 256] (on CPU at window 128,
    blocks of 128 ran as fast as blocks of 64, which skip more of the band but take more steps)."""
    return max(16, min(window, 256))


# Bound on the float32 logits of one scan step (a chunk of at least one block). Small steps keep
# XLA's temporaries small; on CPU, temporaries of ~100 MB (one step for all blocks) made page
# faults take half of each call.
_CHUNK_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Static shape of the banded computation (see `_band_attention`)."""

    block: int  # queries per block
    offsets: tuple[int, ...]  # query block c reads key blocks c + o
    chunk: int  # blocks per scan step
    causal: bool
    dilation: int
    dropout_rate: float

    @property
    def reach(self) -> int:
        return -self.offsets[0]

    @property
    def band_keys(self) -> int:
        return len(self.offsets) * self.block


# Global keys of the band computation: k_glob and v_glob `[B, N, G, H]`; valid, position `[B, G]`.
_Globals = tuple[Array, Array, Array, Array]


def _neighbours(layout: _Layout, x: Array, c0: Array, axis: int) -> Array:
    """The key blocks c + o (o in offsets) of the chunk's query blocks c = c0, c0 + 1, ...

    `x` holds key blocks on `axis`, padded with `reach` empty blocks on both sides, and the keys of
    a block on axis + 1; returns the chunk's blocks on `axis` with `band_keys` keys on axis + 1.
    """
    r, c = layout.reach, layout.chunk
    window = jax.lax.dynamic_slice_in_dim(x, c0, c + 2 * r, axis=axis)
    parts = [jax.lax.slice_in_dim(window, r + o, r + o + c, axis=axis) for o in layout.offsets]
    return jnp.concatenate(parts, axis=axis + 1)


def _chunk_inputs(
    layout: _Layout, c0: Array, qb: Array, kb: Array, vb: Array, key_ok: Array, in_band: Array,
    globals_kv: _Globals | None,
) -> tuple[Array, Array, Array, Array]:
    """Queries `[B, d, N, C, blk, H]`, keys and values `[B, d, N, C, K, H]` and the boolean mask
    `[B, d, 1, C, blk, K]` of the chunk at block c0; K = band_keys (+ G global keys)."""
    c, blk = layout.chunk, layout.block
    q = jax.lax.dynamic_slice_in_dim(qb, c0, c, axis=3)
    k = _neighbours(layout, kb, c0, 3)
    v = _neighbours(layout, vb, c0, 3)
    mask = in_band & _neighbours(layout, key_ok, c0, 2)[:, :, None, :, None, :]
    if globals_kv is not None:
        k_glob, v_glob, g_valid, g_pos = globals_kv

        def append(x: Array, extra: Array) -> Array:  # the global keys, after every block's keys
            shape = (*x.shape[:4], extra.shape[2], x.shape[-1])
            extra = jnp.broadcast_to(extra[:, None, :, None], shape).astype(x.dtype)
            return jnp.concatenate([x, extra], axis=4)

        k, v = append(k, k_glob), append(v, v_glob)
        g_mask = g_valid[:, None, None, None, None, :]
        if layout.causal:  # position of row i of block c of subsequence r: (c * blk + i) * d + r
            d = layout.dilation
            rows = (c0 + jnp.arange(c))[:, None] * blk + jnp.arange(blk)
            pos = rows[None] * d + jnp.arange(d)[:, None, None]  # [d, C, blk]
            g_pos = g_pos[:, None, None, None, None, :]
            g_mask = g_mask & (pos[None, :, None, :, :, None] >= g_pos)
        g_mask = jnp.broadcast_to(g_mask, (*mask.shape[:-1], g_valid.shape[1]))
        mask = jnp.concatenate([mask, g_mask], axis=-1)
    return q, k, v, mask


def _masked_logits(q: Array, k: Array, mask: Array) -> Array:
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...qh,...kh->...qk", q, k, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask, logits, _common.MASK_VALUE)


def _dropout_factor(
    layout: _Layout, rng: jax.Array | None, chunk_index: Array, shape: tuple[int, ...]
) -> Array | None:
    """The multiplier dropout applies to a chunk's weights (0 or 1 / (1 - rate)), or None."""
    if layout.dropout_rate == 0.0:
        return None
    ones = jnp.ones(shape, jnp.float32)
    return dense.dropout_weights(ones, layout.dropout_rate, jax.random.fold_in(rng, chunk_index))


def _unchunk(x: Array) -> Array:
    """Scan output `[n_chunks, B, d, N, C, ...]` -> `[B, d, N, n_chunks * C, ...]`."""
    x = jnp.moveaxis(x, 0, 3)
    return x.reshape(*x.shape[:3], -1, *x.shape[5:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _banded(
    layout: _Layout, qb: Array, kb: Array, vb: Array, globals_kv: _Globals | None, key_ok: Array,
    in_band: Array, rng: jax.Array | None,
) -> Array:
    """Banded attention in block layout: qb `[B, d, N, nb, blk, H]`, kb and vb
    `[B, d, N, reach + nb + reach, blk, H]`, key_ok `[B, d, reach + nb + reach, blk]` (keys the band
    may use), in_band `[blk, band_keys]` -> `[B, d, N, nb, blk, H]` float32."""
    return _banded_fwd(layout, qb, kb, vb, globals_kv, key_ok, in_band, rng)[0]


def _banded_fwd(layout, qb, kb, vb, globals_kv, key_ok, in_band, rng):
    def step(_, i):
        q, k, v, mask = _chunk_inputs(layout, i * layout.chunk, qb, kb, vb, key_ok, in_band,
                                      globals_kv)
        logits = _masked_logits(q, k, mask)
        row_max = jnp.max(logits, axis=-1, keepdims=True)
        exp = jnp.exp(logits - row_max)
        row_sum = jnp.sum(exp, axis=-1, keepdims=True)
        factor = _dropout_factor(layout, rng, i, exp.shape)
        if factor is not None:
            exp = exp * factor
        has_key = jnp.any(mask, axis=-1, keepdims=True)
        out = jnp.einsum("...qk,...kh->...qh", exp, v.astype(jnp.float32))
        out = jnp.where(has_key, out / row_sum, 0.0)
        # log-sum-exp of each row; +inf where a row has no key, so that its weights recompute to 0
        lse = jnp.where(has_key, row_max + jnp.log(row_sum), jnp.inf)[..., 0]
        return None, (out, lse)

    _, (out, lse) = jax.lax.scan(step, None, jnp.arange(qb.shape[3] // layout.chunk))
    out, lse = _unchunk(out), _unchunk(lse)
    return out, (qb, kb, vb, globals_kv, key_ok, in_band, rng, out, lse)


def _banded_bwd(layout, residuals, d_out):
    qb, kb, vb, globals_kv, key_ok, in_band, rng, out, lse = residuals
    scale = qb.shape[-1] ** -0.5
    c, r, blk = layout.chunk, layout.reach, layout.block
    row_stat = jnp.sum(d_out * out, axis=-1)  # [B, d, N, nb, blk]: sum_k weights * d_weights

    def step(carry, i):
        d_kb, d_vb, d_glob = carry
        c0 = i * c
        q, k, v, mask = _chunk_inputs(layout, c0, qb, kb, vb, key_ok, in_band, globals_kv)
        lse_c = jax.lax.dynamic_slice_in_dim(lse, c0, c, axis=3)[..., None]
        d_out_c = jax.lax.dynamic_slice_in_dim(d_out, c0, c, axis=3)
        stat_c = jax.lax.dynamic_slice_in_dim(row_stat, c0, c, axis=3)[..., None]
        weights = jnp.exp(_masked_logits(q, k, mask) - lse_c)
        factor = _dropout_factor(layout, rng, i, weights.shape)
        dropped = weights if factor is None else weights * factor
        d_v = jnp.einsum("...qk,...qh->...kh", dropped, d_out_c)
        d_weights = jnp.einsum("...qh,...kh->...qk", d_out_c, v.astype(jnp.float32))
        if factor is not None:
            d_weights = d_weights * factor
        d_logits = weights * (d_weights - stat_c) * scale
        d_q = jnp.einsum("...qk,...kh->...qh", d_logits, k.astype(jnp.float32))
        d_k = jnp.einsum("...qk,...qh->...kh", d_logits, q.astype(jnp.float32))

        def scatter(acc: Array, grad: Array) -> Array:
            # Add the gradients of each offset's keys back at blocks c0 + o of the padded keys.
            window = jax.lax.dynamic_slice_in_dim(acc, c0, c + 2 * r, axis=3)
            for j, o in enumerate(layout.offsets):
                part = grad[..., j * blk:(j + 1) * blk, :]
                window = window.at[:, :, :, r + o:r + o + c].add(part)
            return jax.lax.dynamic_update_slice_in_dim(acc, window, c0, axis=3)

        d_kb, d_vb = scatter(d_kb, d_k), scatter(d_vb, d_v)
        if d_glob is not None:  # global keys: summed over subsequences and blocks
            g0 = layout.band_keys
            d_glob = (d_glob[0] + d_k[..., g0:, :].sum(axis=(1, 3)),
                      d_glob[1] + d_v[..., g0:, :].sum(axis=(1, 3)))
        return (d_kb, d_vb, d_glob), d_q

    zeros = jnp.zeros(kb.shape, jnp.float32)
    d_glob = None if globals_kv is None else (jnp.zeros(globals_kv[0].shape, jnp.float32),) * 2
    (d_kb, d_vb, d_glob), d_qb = jax.lax.scan(
        step, (zeros, zeros, d_glob), jnp.arange(qb.shape[3] // c))
    d_globals = None
    if globals_kv is not None:
        k_glob, v_glob = globals_kv[:2]
        d_globals = (d_glob[0].astype(k_glob.dtype), d_glob[1].astype(v_glob.dtype), None, None)
    return (_unchunk(d_qb).astype(qb.dtype), d_kb.astype(kb.dtype), d_vb.astype(vb.dtype),
            d_globals, None, None, None)


_banded.defvjp(_banded_fwd, _banded_bwd)


def _band_attention(
    q: Array,
    k: Array,
    v: Array,
    band_keys: Array,
    globals_kv: _Globals | None,
    *,
    window: int,
    dilation: int,
    causal: bool,
    block_size: int | None,
    dropout_rate: float,
    dropout_rng: jax.Array | None,
) -> Array:
    """Every row's band (plus global columns), `[B, T, N, H]` float32.

    Args:
      q, k, v: `[B, T, N, H]`.
      band_keys: `[B, T]`, keys the band may use (real and not global).
      globals_kv: None, or (k_glob `[B, G, N, H]`, v_glob `[B, G, N, H]`, valid `[B, G]`,
        position `[B, G]`) for the global columns.
    """
    b, t, n, h = q.shape
    d = dilation
    sub_len = -(-t // d)
    blk = min(block_size or _default_block(window), sub_len)
    nb = -(-sub_len // blk)
    reach = min(-(-window // blk), nb - 1)
    offsets = tuple(range(-reach, (0 if causal else reach) + 1))
    n_keys = len(offsets) * blk + (0 if globals_kv is None else globals_kv[0].shape[1])
    n_chunks = -(-nb // max(1, _CHUNK_BYTES // (4 * b * d * n * blk * n_keys)))
    chunk = -(-nb // n_chunks)  # as even as possible, so that little padding is added
    nb = n_chunks * chunk
    padded = nb * blk * d
    layout = _Layout(blk, offsets, chunk, causal, d, dropout_rate)

    # Position p = (c * blk + i) * d + r is row i of block c of subsequence r.
    def to_blocks(x: Array, pad_blocks: int) -> Array:
        """`[B, T, N, H]` -> `[B, d, N, nb + 2 * pad_blocks, blk, H]` (zero blocks either side)."""
        x = jnp.pad(x, [(0, 0), (0, padded - t), (0, 0), (0, 0)])
        x = x.reshape(b, nb, blk, d, n, h).transpose(0, 3, 4, 1, 2, 5)
        return jnp.pad(x, [(0, 0)] * 3 + [(pad_blocks, pad_blocks)] + [(0, 0)] * 2)

    qb = to_blocks(q, 0)
    kb, vb = to_blocks(k, reach), to_blocks(v, reach)
    key_ok = jnp.pad(band_keys, [(0, 0), (0, padded - t)])  # padding is False
    key_ok = key_ok.reshape(b, nb, blk, d).transpose(0, 3, 1, 2)
    key_ok = jnp.pad(key_ok, [(0, 0), (0, 0), (reach, reach), (0, 0)])  # [B, d, nb + 2r, blk]

    qi = np.arange(blk)[:, None]
    kj = np.arange(len(offsets) * blk)[None, :]
    rel = np.asarray(offsets)[kj // blk] * blk + kj % blk - qi  # key - query in the subsequence
    in_band = jnp.asarray((np.abs(rel) <= window) & ((rel <= 0) if causal else True))  # [blk, K]

    if globals_kv is not None:
        k_glob, v_glob, g_valid, g_pos = globals_kv
        globals_kv = (k_glob.transpose(0, 2, 1, 3), v_glob.transpose(0, 2, 1, 3), g_valid, g_pos)
    out = _banded(layout, qb, kb, vb, globals_kv, key_ok, in_band, dropout_rng)
    # [B, d, N, nb, blk, H] -> [B, T, N, H]
    out = out.transpose(0, 3, 4, 1, 2, 5).reshape(b, padded, n, h)
    return out[:, :t]


def sliding_window_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    window: int,
    dilation: int = 1,
    global_mask: Array | None = None,
    global_qkv: tuple[Array, Array, Array] | None = None,
    causal: bool = False,
    mask: Array | None = None,
    max_global: int | None = None,
    block_size: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Longformer self-attention: dilated sliding window plus global tokens, in O(T * window).

    Args:
      q, k, v: `[B, T, N, H]` (self-attention: one length T).
      window: one-sided window w >= 1; query i sees keys with |i - j| <= w * dilation.
      dilation: d >= 1; additionally d must divide i - j.
      global_mask: `[B, T]` bool, tokens that attend to all and are attended by all.
      global_qkv: `(qg, kg, vg)`, each `[B, T, N, H]`: the projections global rows use (their
        queries against kg over all keys, averaging vg). None ties them to q, k, v.
      causal: mask j > i everywhere, global tokens included.
      mask: key padding mask `[B, T]`, True = real token.
      max_global: static bound G on global tokens per batch row (a row's tokens past the first G
        act as local ones). Required under jit when `global_mask` is given; otherwise the largest
        count in the mask.
      block_size: query block length of the banded computation (a tuning knob; default
        `window` clipped to [16, 256]).
      dropout_rate, dropout_rng: attention dropout on the weights.

    Returns:
      `[B, T, N, H]` in q's dtype; a row whose keys are all masked is zero.
    """
    dense.check_qkv(q, k, v)
    window = _common.check_int("window", window)
    dilation = _common.check_int("dilation", dilation)
    if block_size is not None:
        block_size = _common.check_int("block_size", block_size)
    b, t, n, h = q.shape
    if k.shape[1] != t:
        raise ValueError(
            f"sliding-window attention is self-attention: q has length {t}, k {k.shape[1]}"
        )
    _common.check_key_padding_mask(mask, b, t)
    _common.check_key_padding_mask(global_mask, b, t, "global_mask")
    if global_qkv is not None:
        if global_mask is None:
            raise ValueError("global_qkv was given without global_mask")
        if len(global_qkv) != 3 or any(tuple(x.shape) != q.shape for x in global_qkv):
            raise ValueError(
                f"global_qkv must be (qg, kg, vg), each of q's shape {q.shape}, got "
                f"{[getattr(x, 'shape', x) for x in global_qkv]}"
            )
    _common.check_dropout(dropout_rate, dropout_rng)
    g = _num_globals(global_mask, max_global)

    key_mask = jnp.ones((b, t), bool) if mask is None else mask.astype(bool)
    rngs = tuple(jax.random.split(dropout_rng)) if dropout_rate > 0.0 else (None, None)
    if g == 0:
        out = _band_attention(
            q, k, v, key_mask, None, window=window, dilation=dilation, causal=causal,
            block_size=block_size, dropout_rate=dropout_rate, dropout_rng=rngs[0],
        )
        return out.astype(q.dtype)

    # The barrier keeps XLA from evaluating what follows at compile time when the global mask is a
    # constant under jit (a classifier's [CLS]): its constant folding runs the argsort, the cumsums
    # and the gathers below element by element, ~1 s per [32, 1024] argsort and layer, whereas at
    # run time they take microseconds.
    is_global = _first_globals(jax.lax.optimization_barrier(jnp.asarray(global_mask)), g)  # [B, T]
    # Positions of each row's global tokens first (in order), then the rest; keep G slots.
    g_pos = jnp.argsort(~is_global, axis=1, stable=True)[:, :g]  # [B, G]
    g_valid = jnp.take_along_axis(is_global & key_mask, g_pos, axis=1)

    def gather(x: Array) -> Array:
        return jnp.take_along_axis(x, g_pos[:, :, None, None], axis=1)

    band = _band_attention(
        q, k, v, key_mask & ~is_global, (gather(k), gather(v), g_valid, g_pos),
        window=window, dilation=dilation, causal=causal, block_size=block_size,
        dropout_rate=dropout_rate, dropout_rng=rngs[0],
    )

    qg, kg, vg = (q, k, v) if global_qkv is None else global_qkv
    row_mask = key_mask[:, None, None, :]  # [B, 1, 1, T]
    if causal:
        row_mask = row_mask & (jnp.arange(t)[None, None, None, :] <= g_pos[:, None, :, None])
    rows = dense.attention(
        gather(qg), kg, vg, mask=row_mask, dropout_rate=dropout_rate, dropout_rng=rngs[1]
    )  # [B, G, N, H]
    slot = jnp.clip(jnp.cumsum(is_global, axis=1) - 1, 0, g - 1)  # [B, T]
    rows_at = jnp.take_along_axis(rows.astype(jnp.float32), slot[:, :, None, None], axis=1)
    return jnp.where(is_global[:, :, None, None], rows_at, band).astype(q.dtype)


def pattern(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    causal: bool = False,
    window: int,
    dilation: int = 1,
    global_mask: Array | None = None,
    max_global: int | None = None,
    **unused_options,
) -> Array:
    """The dense `[B, N, T, T]` boolean pattern of `sliding_window_attention` (tied projections).

    (|i - j| <= window * dilation and dilation divides i - j) or global[i] or global[j], and'ed with
    the key padding `mask` `[B, T]` and, when causal, j <= i.
    """
    window = _common.check_int("window", window)
    dilation = _common.check_int("dilation", dilation)
    b, t, n, _ = q.shape
    _common.check_key_padding_mask(mask, b, t)
    _common.check_key_padding_mask(global_mask, b, t, "global_mask")
    diff = np.arange(t)[:, None] - np.arange(t)[None, :]
    allowed = jnp.asarray((np.abs(diff) <= window * dilation) & (diff % dilation == 0))[None]
    if global_mask is not None:
        glob = global_mask.astype(bool)
        if max_global is not None:
            glob = _first_globals(glob, max_global)
        allowed = allowed | glob[:, :, None] | glob[:, None, :]
    if mask is not None:
        allowed = allowed & mask.astype(bool)[:, None, :]
    if causal:
        allowed = allowed & jnp.asarray(diff >= 0)
    return jnp.broadcast_to(allowed[:, None], (b, n, t, t))


def reference(
    q: Array,
    k: Array,
    v: Array,
    *,
    window: int,
    dilation: int = 1,
    global_mask: Array | None = None,
    global_qkv: tuple[Array, Array, Array] | None = None,
    causal: bool = False,
    mask: Array | None = None,
    max_global: int | None = None,
    **unused_options,
) -> Array:
    """`sliding_window_attention` as dense attentions over `[B, N, T, T]`, for tests.

    Rows of ordinary tokens: `dense.attention(q, k, v, mask=pattern)`. Rows of global tokens (the
    first `max_global` marked ones of each row), when `global_qkv=(qg, kg, vg)` is given: qg
    against all of kg, averaging vg, over the real keys (and, when causal, the earlier ones).
    Arguments as in `sliding_window_attention`; returns `[B, T, N, H]`.
    """
    del unused_options
    allowed = pattern(q, k, mask=mask, causal=causal, window=window, dilation=dilation,
                      global_mask=global_mask, max_global=max_global)
    out = dense.attention(q, k, v, mask=allowed)
    if global_mask is None or global_qkv is None:
        return out
    is_global = global_mask.astype(bool)
    if max_global is not None:
        is_global = _first_globals(is_global, max_global)
    key_mask = None if mask is None else dense.key_padding_pattern(mask)
    rows = dense.attention(*global_qkv, mask=key_mask, causal=causal)
    return jnp.where(is_global[:, :, None, None], rows, out)
