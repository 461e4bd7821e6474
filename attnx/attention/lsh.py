"""Reformer LSH attention (Kitaev et al., 2020) with the semantics of trax and HF transformers.

Queries and keys share one projection `qk` `[B, T, N, H]`. Each of `n_hashes` rounds hashes the
tokens into buckets with a random rotation, sorts them by (bucket, position), cuts the sorted
sequence into chunks of `chunk_len` and lets every chunk attend to itself and to `chunks_before` /
`chunks_after` neighbouring chunks of the sorted sequence (wrapping around, also across rounds).
Keys are the unit-normalised `qk` divided by `sqrt(head_dim)`; queries are `qk` unscaled. A token
attends to itself only through a -1e5 logit, so only when nothing else is available. Each round
keeps its softmax log-sum-exp; the rounds are combined with weights `softmax_r(lse_r)`, which is
one softmax over every (query, key) entry of every round.

Buckets carry round offsets: round r's buckets are offset by `r * n_buckets`, or by
`r * (n_buckets + 1)` when a key padding mask is given (padded tokens sit in the extra bucket
`n_buckets` of every round), as in HF. `n_buckets` may be a tuple of even factors (factorised
hashing: the bucket is the mixed-radix number of the factors' argmaxes). The buckets are a
deterministic function of (qk, rotations or rng, mask) (`hash_vectors`), and `lsh_attention`
accepts precomputed ones, so a reversible backward pass can reuse the forward pass's.

Two refinements of the paper that trax v1 had and HF dropped are options:
`attend_across_buckets=False` masks keys of another bucket, and `allow_duplicate_attention=False`
lowers every entry's logit by log(the number of entries its (query, key) pair has over all rounds
and window slots), so that the rounds combine into one softmax over the union of attended pairs.
A length that is not a multiple of `chunk_len` is padded internally with masked keys that sort
last in every round.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from attnx.attention import _common, dense

Array = jax.Array

# Logit of pairs excluded by causality, padding or (optionally) a bucket mismatch; and of a token's
# pair with itself. Both replace the logit, as in HF's float32 path.
MASKED_LOGIT = -1e9
SELF_LOGIT = -1e5
# Bucket given to the positions added internally to reach a multiple of `chunk_len`: sorts after
# every real bucket of its round. Those keys are masked and those queries are dropped.
_PAD_BUCKET = int(jnp.iinfo(jnp.int32).max)


def _bucket_factors(n_buckets: int | Sequence[int]) -> tuple[int, ...]:
    """Validate `n_buckets` (an even int or a tuple of even ints) and return its factors."""
    factors = (n_buckets,) if isinstance(n_buckets, int) else tuple(n_buckets)
    if not factors or not all(isinstance(f, int) and f >= 2 and f % 2 == 0 for f in factors):
        raise ValueError(
            "n_buckets must be an even int >= 2 or a non-empty tuple of such factors, "
            f"got {n_buckets!r}"
        )
    return factors


def rotations_shape(
    n_heads: int, head_dim: int, n_hashes: int, n_buckets: int | Sequence[int]
) -> tuple[int, int, int, int]:
    """Shape `[heads, head_dim, n_hashes, sum(factors) // 2]` of the random rotations."""
    return (n_heads, head_dim, n_hashes, sum(_bucket_factors(n_buckets)) // 2)


def random_rotations(
    rng: jax.Array, *, n_heads: int, head_dim: int, n_hashes: int, n_buckets: int | Sequence[int]
) -> Array:
    """The hashing rotations, standard normal float32 `rotations_shape(...)`, drawn from `rng`."""
    return jax.random.normal(rng, rotations_shape(n_heads, head_dim, n_hashes, n_buckets), jnp.float32)


def _first_argmax(x: Array) -> Array:
    """`argmax(x, -1)` (first index among ties) as int32, as a max and a min reduction.

    XLA:CPU runs the single (value, index) reduction of `jnp.argmax` far slower than two plain
    ones, and fused reductions over arrays of rank > 3 or with a leading 1 slower still.
    """
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    is_max = x == jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(is_max, iota, x.shape[-1]), axis=-1)


def hash_vectors(
    qk: Array,
    *,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """LSH buckets of `qk` `[B, T, N, H]` -> int32 `[B, N, n_hashes, T]` with round offsets.

    A deterministic function of (qk, rotations or rng, mask): the reversible backward pass can
    recompute the forward pass's buckets, or pass them back to `lsh_attention(buckets=...)`.
    bucket = argmax([xR; -xR]) per factor of `n_buckets`; padded tokens (mask False) go to the
    extra bucket `n_buckets` and the round offset becomes `r * (n_buckets + 1)`.
    """
    factors = _bucket_factors(n_buckets)
    _common.check_int("n_hashes", n_hashes, 1)
    if qk.ndim != 4:
        raise ValueError(f"qk must be [batch, length, heads, head_dim], got shape {qk.shape}")
    b, t, n, h = qk.shape
    _common.check_key_padding_mask(mask, b, t)
    expected = rotations_shape(n, h, n_hashes, factors)
    if rotations is None:
        if rng is None:
            raise ValueError("hashing needs rng (fresh rotations) or rotations (fixed ones): both None")
        rotations = random_rotations(rng, n_heads=n, head_dim=h, n_hashes=n_hashes, n_buckets=factors)
    elif tuple(rotations.shape) != expected:
        raise ValueError(
            f"rotations must have shape [heads, head_dim, n_hashes, sum(n_buckets)//2] = {expected}, "
            f"got {rotations.shape}"
        )
    x = jax.lax.stop_gradient(qk).astype(jnp.float32)
    rotated = jnp.einsum("btnh,nhrf->bnrtf", x, rotations.astype(jnp.float32))
    rotated = rotated.reshape(-1, rotated.shape[-1])  # rank 2 for XLA:CPU's sake (see _first_argmax)
    buckets = jnp.zeros(rotated.shape[:1], jnp.int32)
    start, radix = 0, 1
    for factor in factors:
        part = rotated[:, start : start + factor // 2]
        buckets = buckets + radix * _first_argmax(jnp.concatenate([part, -part], axis=-1))
        start, radix = start + factor // 2, radix * factor
    buckets = buckets.reshape(b, n, n_hashes, t)
    n_total = radix
    if mask is not None:
        buckets = jnp.where(mask.astype(bool)[:, None, None, :], buckets, n_total)
        n_total += 1
    offsets = n_total * jnp.arange(n_hashes, dtype=jnp.int32)
    return buckets + offsets[None, None, :, None]


# Sorting gathers tokens into the per-round sorted order and un-sorting gathers them back. Their
# VJPs are gathers with the other index instead of the scatter-adds autodiff would emit.
# `order` `[B, N, R*T]`: the position of the token at each sorted slot (rounds concatenated);
# `order_rt` the same as an index r*T + position; `slot` `[B, N, R*T]`: the sorted slot of each
# (round r, position t), flattened as r*T + t. `order_rt` and `slot` are inverse permutations.


def _gather(x: Array, index: Array) -> Array:
    """`x[b, n, index[b, n, i], :]` for x `[B, N, T, D]` and in-bounds index `[B, N, I]`."""
    return jnp.take_along_axis(x, index[..., None], axis=2, mode="promise_in_bounds")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _sort_tokens(x: Array, order: Array, slot: Array, n_hashes: int) -> Array:
    """x `[B, N, T, D]` -> `[B, N, R*T, D]` in sorted order, every round after the other."""
    return _gather(x, order)


def _sort_tokens_fwd(x: Array, order: Array, slot: Array, n_hashes: int) -> tuple[Array, Array]:
    return _sort_tokens(x, order, slot, n_hashes), slot


def _sort_tokens_bwd(n_hashes: int, slot: Array, g: Array) -> tuple[Array, None, None]:
    per_round = _gather(g, slot)  # [B, N, R*T, D], indexed by r*T + position
    t = per_round.shape[2] // n_hashes
    rounds = [per_round[:, :, r * t : (r + 1) * t] for r in range(n_hashes)]
    return sum(rounds[1:], rounds[0]), None, None


_sort_tokens.defvjp(_sort_tokens_fwd, _sort_tokens_bwd)


@jax.custom_vjp
def _unsort_tokens(y: Array, order_rt: Array, slot: Array) -> Array:
    """Sorted `[B, N, R*T, D]` -> `[B, N, R*T, D]` indexed by r*T + position."""
    return _gather(y, slot)


def _unsort_tokens_fwd(y: Array, order_rt: Array, slot: Array) -> tuple[Array, Array]:
    return _unsort_tokens(y, order_rt, slot), order_rt


def _unsort_tokens_bwd(order_rt: Array, g: Array) -> tuple[Array, None, None]:
    return _gather(g, order_rt), None, None


_unsort_tokens.defvjp(_unsort_tokens_fwd, _unsort_tokens_bwd)


def _window_multiplicity(delta: Array, n_chunks: int, before: int, after: int) -> Array:
    """How many neighbour offsets o in [-after, before] satisfy o = delta (mod n_chunks).

    delta = (query chunk - key chunk); more than 1 only when the window wraps onto itself.
    """
    d = jnp.mod(delta, n_chunks)
    return (before - d) // n_chunks + (after + d) // n_chunks + 1


def _pair_counts(
    q_loc: Array,
    k_loc: Array,
    q_bucket: Array | None,
    k_bucket: Array | None,
    n_chunks: int,
    before: int,
    after: int,
) -> Array:
    """Number of entries a (query, key) pair has over all rounds' windows.

    q_loc `[..., Q, R]`, k_loc `[..., K, R]`: each token's global chunk index in every round.
    With buckets (attend_across_buckets=False) only entries of the query's own bucket count.
    Returns int32 `[..., Q, K]`.
    """
    n_hashes = q_loc.shape[-1]
    total = jnp.zeros(q_loc.shape[:-1] + k_loc.shape[-2:-1], jnp.int32)
    for r_q in range(n_hashes):
        for r_k in range(n_hashes):
            delta = q_loc[..., :, None, r_q] - k_loc[..., None, :, r_k]
            hits = _window_multiplicity(delta, n_chunks, before, after)
            if q_bucket is not None:
                same = q_bucket[..., :, None, r_q] == k_bucket[..., None, :, r_k]
                hits = jnp.where(same, hits, 0)
            total = total + hits
    return total


def _pad_to_chunks(
    mask: Array | None, buckets: Array, chunk_len: int
) -> tuple[Array | None, Array, int]:
    """Pad the length to a multiple of `chunk_len`: key mask, buckets `[B, N, R, T]`, new length.

    The added positions are masked keys in a bucket after every real one.
    """
    t = buckets.shape[-1]
    t_pad = _common.round_up(t, chunk_len)
    if t_pad == t:
        return mask, buckets, t
    real = jnp.ones((buckets.shape[0], t), bool) if mask is None else mask.astype(bool)
    mask = _common.pad_axis(real, t_pad, axis=1, value=False)
    buckets = _common.pad_axis(buckets, t_pad, axis=3, value=_PAD_BUCKET)
    return mask, buckets, t_pad


def _sort_by_bucket(buckets: Array, n_buckets_total: int) -> tuple[Array, Array, Array]:
    """Sort each round by (bucket, position); buckets `[B, N, R, T]` -> three `[B, N, R*T]` indices.

    `n_buckets_total` is the product of the bucket factors. Returns `order` (the position at each
    sorted slot, rounds one after the other), `order_rt` (the same as r*T + position) and `slot`
    (the sorted slot of (round r, position t) at r*T + t); `order_rt` and `slot` are inverse
    permutations of R*T.
    """
    b, n, n_hashes, t = buckets.shape
    # One int32 key per token, (bucket within its round) * T + position: a single-key sort is much
    # faster than a lexicographic one. Within a round buckets span at most n_buckets_total + 1
    # values (the padding bucket included); internal padding sorts last.
    real = buckets != _PAD_BUCKET
    local = buckets - jnp.min(buckets, axis=3, keepdims=True)
    local = jnp.where(real, local, n_buckets_total + 1)
    iota = jax.lax.broadcasted_iota(jnp.int32, buckets.shape, 3)
    order = jax.lax.sort(local * t + iota, dimension=3) % t
    inverse = jnp.put_along_axis(jnp.zeros_like(order), order, iota, axis=3, inplace=False)
    rounds = t * jnp.arange(n_hashes, dtype=jnp.int32)[:, None]
    order_rt, slot = order + rounds, inverse + rounds
    return order.reshape(b, n, -1), order_rt.reshape(b, n, -1), slot.reshape(b, n, -1)


def _check_lsh_args(
    qk: Array,
    v: Array,
    *,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int,
    chunks_after: int,
    mask: Array | None,
    rng: jax.Array | None,
    rotations: Array | None,
    buckets: Array | None,
) -> None:
    """Raise ValueError, before any tracing, unless the arguments of `lsh_attention` fit together."""
    dense.check_qkv(qk, qk, v)
    if qk.shape[1] != v.shape[1]:
        raise ValueError(f"qk and v must have the same length: qk {qk.shape}, v {v.shape}")
    _bucket_factors(n_buckets)
    _common.check_int("n_hashes", n_hashes, 1)
    _common.check_int("chunk_len", chunk_len, 1)
    _common.check_int("chunks_before", chunks_before, 0)
    _common.check_int("chunks_after", chunks_after, 0)
    b, t, n, h = qk.shape
    _common.check_key_padding_mask(mask, b, t)
    t_pad = _common.round_up(t, chunk_len)
    if (math.prod(_bucket_factors(n_buckets)) + 2) * t_pad >= 2**31:
        raise ValueError(
            f"n_buckets * length must stay below 2**31 (int32 sort keys), got n_buckets={n_buckets!r} "
            f"and padded length {t_pad}"
        )
    if buckets is not None:
        if tuple(buckets.shape) != (b, n, n_hashes, t):
            raise ValueError(
                f"buckets must be [batch, heads, n_hashes, length] = {(b, n, n_hashes, t)}, "
                f"got {buckets.shape}"
            )
        return
    if rng is None and rotations is None:
        raise ValueError("lsh attention needs rng (fresh rotations) or rotations (fixed): both None")
    expected = rotations_shape(n, h, n_hashes, n_buckets)
    if rotations is not None and tuple(rotations.shape) != expected:
        raise ValueError(
            f"rotations must have shape [heads, head_dim, n_hashes, sum(n_buckets)//2] = {expected}, "
            f"got {rotations.shape}"
        )


def _checked_buckets(qk: Array, v: Array, *, n_hashes: int, n_buckets: int | Sequence[int],
                     chunk_len: int, chunks_before: int, chunks_after: int, mask: Array | None,
                     rng: jax.Array | None, rotations: Array | None,
                     buckets: Array | None) -> Array:
    """Validate `lsh_attention`'s arguments; the given `buckets` or, if None, those of `qk`."""
    _check_lsh_args(qk, v, n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len,
                    chunks_before=chunks_before, chunks_after=chunks_after, mask=mask, rng=rng,
                    rotations=rotations, buckets=buckets)
    if buckets is not None:
        return buckets
    return hash_vectors(qk, n_hashes=n_hashes, n_buckets=n_buckets, rng=rng, rotations=rotations,
                        mask=mask)


def lsh_attention(
    qk: Array,
    v: Array,
    *,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    causal: bool = False,
    mask: Array | None = None,
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    return_buckets: bool = False,
    buckets: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    parts: int | None = None,
) -> Array | tuple[Array, Array]:
    """Reformer LSH self-attention with shared queries and keys.

    Args:
      qk: `[B, T, N, H]` shared query-key vectors.
      v: `[B, T, N, Hv]` values.
      n_hashes: hashing rounds.
      n_buckets: an even int, or a tuple of even factors (factorised hashing).
      chunk_len: length of the chunks of the sorted sequence; T need not be a multiple of it.
      chunks_before, chunks_after: neighbouring chunks each chunk attends to (wrapping around).
      causal: query i sees keys j <= i.
      mask: key padding mask `[B, T]`, True = real token; outputs at padded queries are unspecified.
      rng: key for fresh rotations (`random_rotations`); ignored when `rotations` or `buckets` given.
      rotations: fixed rotations `[N, H, n_hashes, sum(n_buckets)//2]`.
      attend_across_buckets: if False, keys of another bucket are masked (trax v1 option).
      allow_duplicate_attention: if False, each entry's logit is lowered by log(number of entries
        the same (query, key) pair has over all rounds), so every pair counts once.
      return_buckets: also return the buckets `[B, N, n_hashes, T]` (with round offsets).
      buckets: precomputed buckets from `hash_vectors` (e.g. the forward pass's, in a reversible
        backward pass); skips hashing.
      dropout_rate, dropout_rng: attention dropout on the weights.
      parts: the N heads are attended in this many independent slices (a divisor of N) once
        hashed; None: `_common.default_parts` (on CPU one per core, so XLA runs them side by
        side; 1 on accelerators). The result does not depend on it.

    Returns:
      `[B, T, N, Hv]` in qk's dtype, and the buckets if `return_buckets`.
    """
    buckets = _checked_buckets(
        qk, v, n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len, chunks_before=chunks_before,
        chunks_after=chunks_after, mask=mask, rng=rng, rotations=rotations, buckets=buckets,
    )
    _common.check_dropout(dropout_rate, dropout_rng)

    def attend(rng_part: jax.Array | None, qk_part: Array, v_part: Array,
               buckets_part: Array) -> Array:
        return _lsh_attend(
            qk_part, v_part, buckets_part.astype(jnp.int32), mask,
            n_buckets_total=math.prod(_bucket_factors(n_buckets)), chunk_len=chunk_len,
            chunks_before=chunks_before, chunks_after=chunks_after, causal=causal,
            attend_across_buckets=attend_across_buckets,
            allow_duplicate_attention=allow_duplicate_attention, dropout_rate=dropout_rate,
            dropout_rng=rng_part)

    out = _common.in_parts(attend, parts, qk, v, buckets, axes=(2, 2, 1), out_axis=2,
                           what="heads", dropout_rng=dropout_rng)
    return (out, buckets) if return_buckets else out


def _key_scale(q: Array) -> Array:
    """Per-token key scale, float32 `[...]`: rsqrt(mean(qk**2) + 1e-6) / sqrt(head_dim).

    Keys are qk times this scale: unit RMS, then divided by sqrt(head_dim).
    """
    x = q.astype(jnp.float32)
    return jax.lax.rsqrt(jnp.mean(x * x, axis=-1) + 1e-6) / math.sqrt(q.shape[-1])


def _combine_rounds(rounds: list[Array], head_dim: int) -> Array:
    """Per-round `[M, H + 1]` (output, then lse) -> `[M, H]` weighted by softmax over rounds of lse.

    A loop over the (few) rounds on rank-2 arrays: XLA:CPU reduces over a middle axis, or over
    the last axis of arrays with a leading axis of 1, very slowly.
    """
    if len(rounds) == 1:
        return rounds[0][:, :head_dim]
    lses = [x[:, head_dim:] for x in rounds]
    top = lses[0]
    for other in lses[1:]:
        top = jnp.maximum(top, other)
    top = jax.lax.stop_gradient(top)
    weights = [jnp.exp(lse - top) for lse in lses]
    total = sum(weights)
    combined = sum(x[:, :head_dim] * w for x, w in zip(rounds, weights))
    return combined / total


def _lsh_attend(
    qk: Array,
    v: Array,
    buckets: Array,
    mask: Array | None,
    *,
    n_buckets_total: int,
    chunk_len: int,
    chunks_before: int,
    chunks_after: int,
    causal: bool,
    attend_across_buckets: bool,
    allow_duplicate_attention: bool,
    dropout_rate: float,
    dropout_rng: jax.Array | None,
) -> Array:
    """Sort, chunk, attend, unsort and combine the rounds; arguments as in `lsh_attention`."""
    b, t, n, h = qk.shape
    hv, n_hashes = v.shape[-1], buckets.shape[2]
    key_mask, buckets, t_pad = _pad_to_chunks(mask, buckets, chunk_len)
    order, order_rt, slot = _sort_by_bucket(buckets, n_buckets_total)  # [B, N, R*T]
    n_chunks = n_hashes * t_pad // chunk_len

    # The attention itself runs on rank-3 arrays [G*C, L, ...] (G = B*N groups of C chunks): XLA:CPU
    # fuses multiply-reduce patterns of higher rank (with a leading 1) into very slow loops.
    groups = b * n

    def to_chunks(x: Array) -> Array:  # [B, N, R*T, ...] -> [G, C, L, ...]
        return x.reshape((groups, n_chunks, chunk_len) + x.shape[3:])

    def flat(x: Array) -> Array:  # [G, C, L, ...] -> [G*C, L, ...]
        return x.reshape((groups * n_chunks,) + x.shape[2:])

    def adjacent(x: Array) -> Array:  # [G, C, L, ...] -> [G*C, W*L, ...]
        return flat(_common.look_around(x, chunks_before, chunks_after, wrap=True))

    # qk and v travel together through one gather: [B, N, T, 2H] -> sorted [B, N, R*T, 2H].
    qkv = _common.pad_axis(jnp.concatenate([qk, v.astype(qk.dtype)], axis=-1), t_pad).transpose(0, 2, 1, 3)
    qkv = flat(to_chunks(_sort_tokens(qkv, order, slot, n_hashes)))  # [G*C, L, 2H]
    q = qkv[..., :h]
    k = (q * _key_scale(q)[..., None]).astype(q.dtype)
    k = adjacent(k.reshape((groups, n_chunks) + k.shape[1:]))  # [G*C, W*L, H]
    vals = adjacent(qkv[..., h:].reshape((groups, n_chunks, chunk_len, hv)))
    q_pos = to_chunks(order)  # [G, C, L]
    k_pos = adjacent(q_pos)  # [G*C, W*L]
    q_pos = flat(q_pos)

    # Scores are laid out keys first, [G*C, W*L, L] (softmax over axis 1), which XLA:CPU runs
    # faster forward + backward than [G*C, L, W*L] (experiments/efficiency).
    logits = jnp.einsum("ckh,cqh->ckq", k, q, preferred_element_type=jnp.float32)
    allowed = None
    if key_mask is not None:
        k_real = adjacent(to_chunks(jnp.take_along_axis(key_mask[:, None, :], order, axis=-1)))
        allowed = k_real[:, :, None]
    if causal:
        allowed = dense.combine_masks(allowed, k_pos[:, :, None] <= q_pos[:, None, :])
    if allowed is not None:
        logits = jnp.where(allowed, logits, MASKED_LOGIT)
    logits = jnp.where(k_pos[:, :, None] == q_pos[:, None, :], SELF_LOGIT, logits)
    if not attend_across_buckets:
        q_bucket = to_chunks(jnp.take_along_axis(buckets.reshape(b, n, -1), order_rt, axis=-1))
        k_bucket = adjacent(q_bucket)
        q_bucket = flat(q_bucket)
        logits = jnp.where(k_bucket[:, :, None] == q_bucket[:, None, :], logits, MASKED_LOGIT)
    if not allow_duplicate_attention:
        counts = _entry_counts(order, slot, buckets, attend_across_buckets, chunk_len=chunk_len,
                               chunks_before=chunks_before, chunks_after=chunks_after)
        logits = logits - jnp.log(jnp.swapaxes(counts, 1, 2))

    lse = jax.nn.logsumexp(logits, axis=1, keepdims=True)  # [G*C, 1, L]
    weights = dense.dropout_weights(jnp.exp(logits - lse), dropout_rate, dropout_rng)
    out = jnp.einsum("ckq,ckh->cqh", weights.astype(vals.dtype), vals,
                     preferred_element_type=jnp.float32)
    lse = jnp.swapaxes(lse, 1, 2)  # [G*C, L, 1]

    # Undo the sort (the lse rides along as one more channel), then combine the rounds.
    sorted_out = jnp.concatenate([out, lse], axis=-1).reshape(b, n, n_hashes * t_pad, hv + 1)
    unsorted = _unsort_tokens(sorted_out, order_rt, slot)  # [B, N, R*T, Hv + 1]
    rounds = [unsorted[:, :, r * t_pad : (r + 1) * t_pad].reshape(-1, hv + 1) for r in range(n_hashes)]
    out = _combine_rounds(rounds, hv).reshape(b, n, t_pad, hv)
    return out[:, :, :t].transpose(0, 2, 1, 3).astype(qk.dtype)


def _chunk_locations(slot: Array, n_hashes: int, chunk_len: int) -> Array:
    """Global chunk index of every token in every round: slot `[B, N, R*T]` -> `[B, N, T, R]`."""
    b, n, _ = slot.shape
    return jnp.swapaxes((slot // chunk_len).reshape(b, n, n_hashes, -1), 2, 3)


def _entry_counts(
    order: Array,
    slot: Array,
    buckets: Array,
    attend_across_buckets: bool,
    *,
    chunk_len: int,
    chunks_before: int,
    chunks_after: int,
) -> Array:
    """For every sorted (query, key) entry, how many entries its pair has over all rounds.

    order, slot `[B, N, R*T]` from `_sort_by_bucket`; buckets `[B, N, R, T]`.
    Returns float32 `[B*N*C, L, W*L]`, at least 1 (entries masked by bucket may count 0).
    """
    b, n, n_hashes, t = buckets.shape
    n_chunks = n_hashes * t // chunk_len
    shape = (b * n, n_chunks, chunk_len, n_hashes)
    locs = _chunk_locations(slot, n_hashes, chunk_len)  # [B, N, T, R]
    q_loc = jnp.take_along_axis(locs, order[..., None], axis=2).reshape(shape)
    k_loc = _common.look_around(q_loc, chunks_before, chunks_after, wrap=True)
    q_bucket = k_bucket = None
    if not attend_across_buckets:
        token_buckets = jnp.swapaxes(buckets, 2, 3)  # [B, N, T, R]
        q_bucket = jnp.take_along_axis(token_buckets, order[..., None], axis=2).reshape(shape)
        k_bucket = _common.look_around(q_bucket, chunks_before, chunks_after, wrap=True)
    counts = _pair_counts(q_loc, k_loc, q_bucket, k_bucket, n_chunks, chunks_before, chunks_after)
    return jnp.maximum(counts, 1).astype(jnp.float32).reshape((b * n * n_chunks,) + counts.shape[2:])


def _dense_pair_counts(
    buckets: Array,
    mask: Array | None,
    *,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int,
    chunks_after: int,
    attend_across_buckets: bool,
) -> Array:
    """Entries of every (query, key) pair over all rounds' windows, int32 `[B, N, T, T]`.

    buckets `[B, N, R, T]` from `hash_vectors`; with attend_across_buckets=False only entries of
    the query's own bucket count. Uses O(T^2) memory: for `pattern` and `reference`.
    """
    n_hashes, t = buckets.shape[2], buckets.shape[3]
    _, padded_buckets, t_pad = _pad_to_chunks(mask, buckets.astype(jnp.int32), chunk_len)
    _, _, slot = _sort_by_bucket(padded_buckets, math.prod(_bucket_factors(n_buckets)))
    locs = _chunk_locations(slot, n_hashes, chunk_len)  # [B, N, T, R]
    token_buckets = None if attend_across_buckets else jnp.swapaxes(padded_buckets, 2, 3)
    counts = _pair_counts(locs, locs, token_buckets, token_buckets,
                          n_hashes * t_pad // chunk_len, chunks_before, chunks_after)
    return counts[:, :, :t, :t]


def pattern(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    causal: bool = False,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    attend_across_buckets: bool = True,
    buckets: Array | None = None,
    **unused_options,
) -> Array:
    """Union over hash rounds of the (query, key) pairs LSH attention attends, `[B, N, T, T]` bool.

    `q` is the shared qk `[B, T, N, H]` (`k` is ignored: keys are the same vectors). Pairs excluded
    by causality, padding or (with attend_across_buckets=False) a bucket mismatch are False. The
    diagonal is always True: a token's own pair is always in its window, with the -1e5 logit.
    Uses O(T^2) memory: for tests and attention-map images.
    """
    del k, unused_options
    buckets = _checked_buckets(
        q, q, n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len, chunks_before=chunks_before,
        chunks_after=chunks_after, mask=mask, rng=rng, rotations=rotations, buckets=buckets,
    )
    t = q.shape[1]
    attended = _dense_pair_counts(
        buckets, mask, n_buckets=n_buckets, chunk_len=chunk_len, chunks_before=chunks_before,
        chunks_after=chunks_after, attend_across_buckets=attend_across_buckets) > 0
    if mask is not None:
        attended = attended & mask.astype(bool)[:, None, None, :]
    if causal:
        attended = attended & dense.causal_pattern(t, t)
    return attended | jnp.eye(t, dtype=bool)


def reference(
    qk: Array,
    v: Array,
    *,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    causal: bool = False,
    mask: Array | None = None,
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    buckets: Array | None = None,
    **unused_options,
) -> Array:
    """`lsh_attention` written as one dense softmax over `[B, N, T, T]` logits, for tests.

    Combining the rounds by softmax over their log-sum-exps is one softmax over every entry of
    every round, so a pair with c entries (over all rounds and window slots) weighs
    c * exp(logit), or exp(logit) once without duplicates. Logits are qk against the
    unit-normalised qk / sqrt(head_dim), -1e9 for keys excluded by padding or causality and -1e5
    for a token's own pair. Arguments as in `lsh_attention`; returns `[B, T, N, Hv]`.
    """
    del unused_options
    buckets = _checked_buckets(
        qk, v, n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len,
        chunks_before=chunks_before, chunks_after=chunks_after, mask=mask, rng=rng,
        rotations=rotations, buckets=buckets,
    )
    entries = _dense_pair_counts(
        buckets, mask, n_buckets=n_buckets, chunk_len=chunk_len, chunks_before=chunks_before,
        chunks_after=chunks_after, attend_across_buckets=attend_across_buckets)
    if not allow_duplicate_attention:
        entries = jnp.minimum(entries, 1)
    t, h = qk.shape[1], qk.shape[-1]
    x = qk.astype(jnp.float32)
    keys = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) / math.sqrt(h)
    logits = jnp.einsum("bqnh,bknh->bnqk", x, keys)
    valid = jnp.ones((t, t), bool) if mask is None else mask.astype(bool)[:, None, None, :]
    if causal:
        valid = valid & dense.causal_pattern(t, t)
    logits = jnp.where(valid, logits, MASKED_LOGIT)
    logits = jnp.where(jnp.eye(t, dtype=bool), SELF_LOGIT, logits)
    logits = logits + jnp.log(jnp.maximum(entries, 1).astype(jnp.float32))
    weights = _common.masked_softmax(logits, entries > 0)
    return jnp.einsum("bnqk,bknh->bqnh", weights, v.astype(jnp.float32)).astype(qk.dtype)


# ----------------------------------------------------------------------------------------------
# Incremental decoding: HF's rule (`past_buckets_states`).


def prefill(
    qk: Array,
    v: Array,
    *,
    max_len: int,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    **unused_options,
) -> tuple[Array, dict[str, Array]]:
    """Causal LSH attention over a prompt qk, v `[B, P, N, H]` (exactly `lsh_attention`), and
    the decoding cache of `max_len` positions `decode_step` continues from: the prompt's qk, v
    and buckets (`'buckets'` `[B, N, n_hashes, max_len]`). Returns (`[B, P, N, Hv]`, cache)."""
    del unused_options
    out, buckets = lsh_attention(
        qk, v, n_hashes=n_hashes, n_buckets=n_buckets, chunk_len=chunk_len,
        chunks_before=chunks_before, chunks_after=chunks_after, causal=True, rng=rng,
        rotations=rotations, attend_across_buckets=attend_across_buckets,
        allow_duplicate_attention=allow_duplicate_attention, return_buckets=True)
    cache = _common.prefix_cache(qk, v, max_len)
    cache["buckets"] = _common.pad_axis(buckets, max_len, axis=3)
    return out, cache


def decode_step(
    qk: Array,
    v: Array,
    cache: dict[str, Array],
    *,
    n_hashes: int,
    n_buckets: int | Sequence[int],
    chunk_len: int,
    chunks_before: int = 1,
    chunks_after: int = 0,
    rng: jax.Array | None = None,
    rotations: Array | None = None,
    attend_across_buckets: bool = True,
    allow_duplicate_attention: bool = True,
    **unused_options,
) -> tuple[Array, dict[str, Array]]:
    """LSH attention of one new token after the cached ones, by HF's decoding rule.

    qk, v `[B, 1, N, H]` are the token at position i = `cache['index']`. The token is hashed with the prompt's rotations (same `rng` or
    `rotations`). In every round, the i + 1 tokens (cached and new) are sorted by (bucket,
    position); the new token, the latest, lands at slot p, last of its bucket; it attends to the
    window of slots (p // chunk_len - chunks_before) * chunk_len onwards,
    chunk_len * (1 + chunks_before + chunks_after) of them, taken modulo i + 1 (so a short
    sequence repeats tokens, and the window wraps within its round, not across rounds). All
    rounds' entries share one softmax (so a key in several windows counts that many times), with
    the logit rules of `lsh_attention`: keys are the normalised qk / sqrt(H), the token's own
    pair -1e5, and the `attend_across_buckets` / `allow_duplicate_attention` options.

    This is a decoding rule, not the last row of `lsh_attention` over positions 0 .. i: the
    cached tokens keep the outputs they had when they were decoded, and the windows wrap within
    a round. Returns (`[B, 1, N, Hv]` in qk's dtype, the cache with the token appended).
    """
    del unused_options
    if qk.ndim != 4 or qk.shape[1] != 1:
        raise ValueError(f"qk must be one token [batch, 1, heads, head_dim], got shape {qk.shape}")
    _common.check_int("chunk_len", chunk_len, 1)
    _common.check_int("chunks_before", chunks_before, 0)
    _common.check_int("chunks_after", chunks_after, 0)
    factors = _bucket_factors(n_buckets)
    cache = _common.append_to_cache(cache, qk, v)
    index, max_len = cache["index"], cache["k"].shape[1]
    if (math.prod(factors) * n_hashes + 1) * max_len >= 2**31:
        raise ValueError(f"n_buckets * n_hashes * max_len must stay below 2**31 (int32 sort keys),"
                         f" got n_buckets={n_buckets!r}, n_hashes={n_hashes}, max_len={max_len}")
    new_buckets = hash_vectors(qk, n_hashes=n_hashes, n_buckets=factors, rng=rng,
                               rotations=rotations)  # [B, N, R, 1]
    positions = jnp.arange(max_len, dtype=jnp.int32)
    buckets = jnp.where(positions == index, new_buckets, cache["buckets"])  # [B, N, R, M]
    # Sort each round by (bucket, position); empty slots after the new token sort last.
    keys = jnp.where(positions <= index, buckets * max_len + positions, _PAD_BUCKET)
    order = jnp.argsort(keys, axis=-1).astype(jnp.int32)  # positions in sorted order
    slot = jnp.sum(keys < (new_buckets * max_len + index), axis=-1)  # [B, N, R]
    width = chunk_len * (1 + chunks_before + chunks_after)
    first = (slot // chunk_len - chunks_before) * chunk_len
    window = jnp.mod(first[..., None] + jnp.arange(width), index + 1)  # [B, N, R, W] slots
    key_pos = jnp.take_along_axis(order, window, axis=-1)  # [B, N, R, W] positions
    b, n = key_pos.shape[:2]
    entries = key_pos.reshape(b, n, -1)  # [B, N, E], E = R * W

    def gather(x: Array) -> Array:  # [B, M, N, D] -> [B, N, E, D]
        return jnp.take_along_axis(jnp.swapaxes(x, 1, 2), entries[..., None], axis=2)

    k_e = gather(cache["k"])
    k_e = k_e * _key_scale(k_e)[..., None].astype(k_e.dtype)
    logits = jnp.einsum("bnh,bneh->bne", qk[:, 0], k_e, preferred_element_type=jnp.float32)
    logits = jnp.where(entries == index, SELF_LOGIT, logits)
    same = None
    if not attend_across_buckets:
        key_buckets = jnp.take_along_axis(buckets, key_pos, axis=-1)  # [B, N, R, W]
        same = (key_buckets == new_buckets).reshape(b, n, -1)
        logits = jnp.where(same, logits, MASKED_LOGIT)
    if not allow_duplicate_attention:
        pairs = entries[..., :, None] == entries[..., None, :]  # [B, N, E, E]
        if same is not None:
            pairs = pairs & same[..., None, :]
        logits = logits - jnp.log(jnp.maximum(pairs.sum(-1), 1).astype(jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bne,bneh->bnh", weights.astype(v.dtype), gather(cache["v"]),
                     preferred_element_type=jnp.float32)
    new_cache = {**cache, "buckets": buckets, "index": index + 1}
    return out[:, None].astype(qk.dtype), new_cache
