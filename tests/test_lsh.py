"""Reformer LSH attention: HF parity, dense equivalence, a plain loop reference, masking and errors.

The parity vectors in tests/testdata/hf_reformer_lsh_*.npz are copies of ../shared/testdata (HF
transformers' `LSHSelfAttention` with fixed rotations; see that folder's README). To keep compile
time low, the tests share a few jitted functions (options static) and fixed rotations.
"""

import functools
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnx.attention import dense, lsh

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
B, T, N, H = 2, 32, 2, 8
STATIC = ("n_hashes", "n_buckets", "chunk_len", "chunks_before", "chunks_after", "causal",
          "attend_across_buckets", "allow_duplicate_attention", "return_buckets", "dropout_rate",
          "parts")
lsh_jit = jax.jit(lsh.lsh_attention, static_argnames=STATIC)
pattern_jit = jax.jit(lsh.pattern, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def lsh_value_and_grads(qk, v, cotangent, *, mask=None, rotations=None, real=None, **options):
    """LSH output (zeroed outside `real` rows) and the gradients of <output, cotangent> wrt qk, v."""
    def fn(a, b):
        out = lsh.lsh_attention(a, b, mask=mask, rotations=rotations, **options)
        return out if real is None else out * real[:, :, None, None]
    out, vjp = jax.vjp(fn, qk, v)
    return (out,) + vjp(cotangent)


@functools.partial(jax.jit, static_argnames=("causal",))
def dense_value_and_grads(qk, v, cotangent, *, mask=None, causal=False, real=None):
    """The dense equivalent of LSH attention and its gradients, as `lsh_value_and_grads`.

    Keys are qk normalised as written in the paper; they already carry 1/sqrt(head_dim), hence
    scale=1. The self logit (-1e5 in place of q.k) is a -1e5 bias on the diagonal: its softmax
    weight is exactly 0 in float32 unless the token has no other key, and then it is 1 either way
    (with a zero logit gradient in both).
    """
    length, head_dim = qk.shape[1], qk.shape[-1]
    self_bias = jnp.where(jnp.eye(length, dtype=bool), -1e5, 0.0)

    def fn(a, b):
        keys = a / jnp.sqrt(jnp.mean(a**2, axis=-1, keepdims=True) + 1e-6) / math.sqrt(head_dim)
        out = dense.attention(a, keys, b, mask=mask, bias=self_bias, causal=causal, scale=1.0)
        return out if real is None else out * real[:, :, None, None]
    out, vjp = jax.vjp(fn, qk, v)
    return (out,) + vjp(cotangent)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _rotations(seed, n_hashes, n_columns, heads=N, head_dim=H):
    return _normal(seed, (heads, head_dim, n_hashes, n_columns))


def _assert_all_close(got, want, tol=1e-5):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=tol, rtol=tol)


@pytest.fixture(scope="module")
def qkv():
    return _normal(0, (B, T, N, H)), _normal(1, (B, T, N, H)), _normal(2, (B, T, N, H))


@pytest.fixture(scope="module")
def padding():
    """Key padding mask [B, T] with 5 padded tokens at the end of the second example."""
    return jnp.arange(T)[None, :] < jnp.array([[T], [T - 5]])


# ----------------------------------------------------------------------------- HF parity


@pytest.mark.parametrize("name", ["causal", "causal_padded", "bidirectional_factorized"])
def test_matches_hf_lsh_self_attention(name):
    data = np.load(os.path.join(TESTDATA, f"hf_reformer_lsh_{name}.npz"))
    meta = json.loads(str(data["meta"]))
    n_buckets = meta["n_buckets"] if isinstance(meta["n_buckets"], int) else tuple(meta["n_buckets"])
    mask = data["mask"] if meta["padded"] else None
    out, buckets = lsh_jit(
        jnp.asarray(data["qk"]), jnp.asarray(data["v"]), n_hashes=meta["n_hashes"],
        n_buckets=n_buckets, chunk_len=meta["chunk_len"], chunks_before=meta["chunks_before"],
        chunks_after=meta["chunks_after"], causal=meta["causal"],
        rotations=jnp.asarray(data["rotations"]), mask=mask, return_buckets=True)
    np.testing.assert_array_equal(np.asarray(buckets), data["buckets"])

    out, expected, values = np.asarray(out), data["out"], data["v"]
    real = np.broadcast_to(data["mask"][..., None] if meta["padded"] else True, out.shape[:3])
    close = np.all(np.abs(out - expected) <= 1e-5 + 1e-5 * np.abs(expected), axis=-1)
    # The other rows are tokens with nothing but themselves to attend to (the -1e5 self logit):
    # their output is exactly their own value, which HF's float32 rounding of that logit blurs.
    self_only = real & ~close
    np.testing.assert_allclose(out[self_only], values[self_only], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(expected[self_only], values[self_only], atol=3e-2)
    assert self_only.sum() < 0.15 * real.sum()
    if meta["causal"]:  # the first token has only itself
        np.testing.assert_allclose(out[:, 0], values[:, 0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- hashing


def test_factorized_buckets_follow_the_mixed_radix_formula(qkv, padding):
    qk = qkv[0]
    rotations = _rotations(3, 3, 2 + 3)  # factors (4, 6): 2 + 3 rotation columns
    buckets = lsh.hash_vectors(qk, n_hashes=3, n_buckets=(4, 6), rotations=rotations, mask=padding)

    rotated = np.einsum("btnh,nhrf->bnrtf", np.float64(qk), np.float64(rotations))
    first = np.argmax(np.concatenate([rotated[..., :2], -rotated[..., :2]], -1), -1)
    second = np.argmax(np.concatenate([rotated[..., 2:], -rotated[..., 2:]], -1), -1)
    expected = np.where(np.asarray(padding)[:, None, None, :], first + 4 * second, 24)  # padding: 24
    expected = expected + 25 * np.arange(3)[None, None, :, None]  # round offsets r * (24 + 1)
    np.testing.assert_array_equal(buckets, expected)
    assert len(np.unique(expected[:, :, 0])) > 12  # both factors are used


def test_buckets_are_a_function_of_qk_and_the_rotations(qkv):
    qk, v, _ = qkv
    key = jax.random.key(7, impl="rbg")  # (threefry's kernels take long to compile on CPU)
    rotations = lsh.random_rotations(key, n_heads=N, head_dim=H, n_hashes=2, n_buckets=4)
    assert rotations.shape == lsh.rotations_shape(N, H, 2, 4) == (N, H, 2, 2)
    from_rng = lsh.hash_vectors(qk, n_hashes=2, n_buckets=4, rng=key)
    fixed = lsh.hash_vectors(qk, n_hashes=2, n_buckets=4, rotations=rotations)
    np.testing.assert_array_equal(from_rng, fixed)
    assert from_rng.dtype == jnp.int32 and from_rng.shape == (B, N, 2, T)

    options = dict(n_hashes=2, n_buckets=4, chunk_len=8)
    out, buckets = lsh_jit(qk, v, rotations=rotations, return_buckets=True, **options)
    np.testing.assert_array_equal(buckets, from_rng)
    # Reusing the buckets (as a reversible backward pass does) reproduces the output exactly.
    np.testing.assert_array_equal(out, lsh_jit(qk, v, buckets=buckets, **options))
    other = lsh_jit(qk, v, rotations=_rotations(8, 2, 2), return_buckets=True, **options)[0]
    assert np.abs(np.asarray(other - out)).max() > 1e-2


# ----------------------------------------------------------------------------- dense equivalence


def test_one_round_covering_every_chunk_equals_dense(qkv):
    # One round of 4 chunks of 8, each chunk seeing itself, 1 before and 2 after: every pair
    # exactly once. (Sorted order is not positional: chunks after can hold earlier tokens.)
    qk, v, cotangent = qkv
    got = lsh_value_and_grads(qk, v, cotangent, rotations=_rotations(4, 1, 2), n_hashes=1,
                              n_buckets=4, chunk_len=8, chunks_before=1, chunks_after=2, causal=True)
    _assert_all_close(got, dense_value_and_grads(qk, v, cotangent, causal=True))


def test_without_duplicates_multi_round_equals_dense_on_its_pattern(qkv, padding):
    # allow_duplicate_attention=False counts every attended pair once, so the rounds combine into
    # one softmax over the union pattern.
    qk, v, cotangent = qkv
    options = dict(n_hashes=3, n_buckets=4, chunk_len=4, chunks_before=1, chunks_after=1,
                   causal=True, rotations=_rotations(5, 3, 2), mask=padding)
    attended = pattern_jit(qk, qk, **options)
    assert 0.1 < float(jnp.mean(attended)) < 0.9  # LSH skipped some pairs, kept others
    got = lsh_value_and_grads(qk, v, cotangent, allow_duplicate_attention=False, real=padding,
                              **options)
    _assert_all_close(got, dense_value_and_grads(qk, v, cotangent, mask=attended, real=padding))


# ----------------------------------------------------------------------------- loop reference


def _reference(qk, v, buckets, mask, *, chunk_len, chunks_before, chunks_after, causal, across,
               duplicates):
    """LSH attention written entry by entry in float64, from the buckets, for tiny inputs.

    Returns the output `[B, T, N, H]` and the union pattern `[B, N, T, T]` of attended pairs.
    """
    qk, v, buckets = np.asarray(qk, np.float64), np.asarray(v, np.float64), np.asarray(buckets)
    b_size, t, n_heads, h = qk.shape
    n_hashes = buckets.shape[2]
    t_pad = -(-t // chunk_len) * chunk_len
    real = np.asarray(mask)
    keys = qk / np.sqrt(np.mean(qk**2, -1, keepdims=True) + 1e-6) / np.sqrt(h)
    out = np.zeros(qk.shape[:3] + v.shape[3:])
    attended = np.eye(t, dtype=bool)[None, None].repeat(b_size, 0).repeat(n_heads, 1)
    for b, n in itertools.product(range(b_size), range(n_heads)):
        # Sorted slots (position, bucket), round after round; internal padding sorts last.
        slots = []
        for r in range(n_hashes):
            bucket = [buckets[b, n, r, p] if p < t else None for p in range(t_pad)]
            order = sorted(range(t_pad), key=lambda p: (bucket[p] is None, bucket[p] or 0, p))
            slots += [(p, bucket[p]) for p in order]
        n_chunks = len(slots) // chunk_len
        entries = {}  # query slot -> [(key position, logit, counted as the pair's entry)]
        for s, (i, b_i) in enumerate(slots):
            if i >= t:  # internal padding: its output is dropped
                continue
            for o in range(-chunks_before, chunks_after + 1):
                c = (s // chunk_len + o) % n_chunks
                for j, b_j in slots[c * chunk_len:(c + 1) * chunk_len]:
                    valid = j < t and real[b, j] and (not causal or i >= j)
                    logit = qk[b, i, n] @ keys[b, j, n] if valid else -1e9
                    if i == j:
                        logit = -1e5
                    same_bucket = b_i is not None and b_i == b_j
                    if not across and not same_bucket:
                        logit = -1e9
                    entries.setdefault(s, []).append((j, logit, across or same_bucket))
                    if valid and (across or same_bucket):
                        attended[b, n, i, j] = True
        counts = {}
        for s in entries:
            for j, _, counted in entries[s]:
                counts[slots[s][0], j] = counts.get((slots[s][0], j), 0) + counted
        rounds = {}  # position -> [(lse, output)], one per round
        for s in entries:
            i = slots[s][0]
            logits = np.array([x - (0.0 if duplicates else np.log(max(counts[i, j], 1)))
                               for j, x, _ in entries[s]])
            lse = np.max(logits) + np.log(np.sum(np.exp(logits - np.max(logits))))
            values = np.stack([v[b, j, n] if j < t else 0 * v[b, 0, n] for j, _, _ in entries[s]])
            rounds.setdefault(i, []).append((lse, np.exp(logits - lse) @ values))
        for i in range(t):
            lses = np.array([lse for lse, _ in rounds[i]])
            weights = np.exp(lses - np.max(lses))
            out[b, i, n] = sum(w * o for w, (_, o) in zip(weights / weights.sum(), rounds[i]))
    return out, attended


@pytest.mark.parametrize("causal,across,duplicates,jit", [
    (True, True, True, False), (False, True, False, True), (True, False, False, True),
])
def test_matches_a_plain_loop_reference(causal, across, duplicates, jit):
    # 18 tokens in chunks of 4 (padded internally to 20), padding in the second example, two
    # rounds over 10 chunks with one chunk either side: windows wrap across rounds. One case
    # runs without jit.
    t, h = 18, 4
    qk, v = _normal(10, (B, t, N, h)), _normal(11, (B, t, N, 3))  # values of another head_dim
    mask = jnp.arange(t)[None, :] < jnp.array([[t], [t - 4]])
    options = dict(n_hashes=2, n_buckets=4, chunk_len=4, chunks_before=1, chunks_after=1, causal=causal,
                   mask=mask, rotations=_rotations(12, 2, 2, head_dim=h), attend_across_buckets=across)
    fn = lsh_jit if jit else lsh.lsh_attention
    out, buckets = fn(qk, v, allow_duplicate_attention=duplicates, return_buckets=True, **options)
    want, attended = _reference(qk, v, buckets, mask, chunk_len=4, chunks_before=1, chunks_after=1,
                                causal=causal, across=across, duplicates=duplicates)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(out)[real], want[real], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(pattern_jit(qk, qk, **options), attended)


# ----------------------------------------------------------------------------- masking


def test_padded_keys_receive_no_weight(qkv):
    qk, v, cotangent = qkv
    mask = jnp.arange(T)[None, :] < jnp.array([[T - 3], [T - 11]])
    options = dict(n_hashes=2, n_buckets=4, chunk_len=8, rotations=_rotations(1, 2, 2), mask=mask,
                   real=mask)
    out, d_qk, d_v = lsh_value_and_grads(qk, v, cotangent, **options)
    padded = ~np.asarray(mask)
    assert np.all(np.asarray(d_v)[padded] == 0.0) and np.all(np.asarray(d_qk)[padded] == 0.0)
    assert np.all(np.abs(np.asarray(d_v)[~padded]).sum(-1) > 0.0)
    # Whatever sits at padded positions changes nothing at the real ones.
    noise = 100.0 * _normal(9, qk.shape) * ~mask[:, :, None, None]
    noisy = lsh_value_and_grads(qk + noise, v + noise, cotangent, **options)[0]
    np.testing.assert_allclose(noisy, out, atol=1e-6)


@pytest.fixture(scope="module")
def small():
    """A tiny single-example input for Jacobians: qk, v `[1, 16, N, 4]`, fixed rotations."""
    return _normal(20, (1, 16, N, 4)), _normal(21, (1, 16, N, 4)), _rotations(22, 2, 2, head_dim=4)


def test_causality_by_gradients(small):
    qk, v, rotations = small
    t = qk.shape[1]
    options = dict(n_hashes=2, n_buckets=4, chunk_len=4, causal=True, rotations=rotations)
    fn = functools.partial(lsh.lsh_attention, **options)
    jacobians = jax.jit(jax.jacrev(fn, argnums=(0, 1)))(qk, v)
    for jac in jacobians:  # [1, Tq, N, H, 1, Tk, N, H]: influence of key position j on query i
        influence = np.abs(np.asarray(jac)).sum(axis=(0, 2, 3, 4, 6, 7))
        assert np.all(influence[np.triu_indices(t, 1)] == 0.0)
        assert np.count_nonzero(influence[np.tril_indices(t, -1)]) > t


def test_attend_across_buckets_false_never_mixes_buckets(small):
    qk, v, rotations = small
    options = dict(n_hashes=2, n_buckets=4, chunk_len=4, chunks_before=1, chunks_after=1,
                   rotations=rotations)
    buckets = np.asarray(lsh.hash_vectors(qk, n_hashes=2, n_buckets=4, rotations=rotations))[0]
    share = np.any(buckets[:, :, :, None] == buckets[:, :, None, :], axis=1)  # [N, T, T]
    fn = functools.partial(lsh.lsh_attention, qk, attend_across_buckets=False, **options)
    jac = jax.jit(jax.jacrev(fn))(v)
    for head in range(N):  # d out[:, head] / d v[:, head] -> [Tq, Tk]
        influence = np.abs(np.asarray(jac)[0, :, head, :, 0, :, head, :]).sum(axis=(1, 3))
        assert np.all(influence[~share[head]] == 0.0)
        assert np.count_nonzero(influence[share[head]]) > share[head].sum() // 2
    separate = np.asarray(pattern_jit(qk, qk, attend_across_buckets=False, **options))[0]
    assert not np.any(separate & ~share)
    # The default does attend across buckets.
    assert np.any(np.asarray(pattern_jit(qk, qk, **options))[0] & ~share)


# ----------------------------------------------------------------------------- lengths, jit, dtypes


def test_length_not_a_multiple_of_chunk_len_equals_explicit_padding(qkv):
    qk, v, _ = qkv
    t = T - 3
    options = dict(n_hashes=2, n_buckets=4, chunk_len=8, causal=True, rotations=_rotations(6, 2, 2))
    out = lsh_jit(qk[:, :t], v[:, :t], **options)
    assert out.shape == (B, t, N, H)
    padded = lsh_jit(qk, v, mask=jnp.broadcast_to(jnp.arange(T) < t, (B, T)), **options)
    np.testing.assert_allclose(out, padded[:, :t], atol=1e-6)


def test_bfloat16_and_dropout(qkv):
    qk, v, _ = qkv
    options = dict(n_hashes=2, n_buckets=4, chunk_len=8, causal=True, rotations=_rotations(6, 2, 2),
                   mask=jnp.ones((B, T), bool))
    out = lsh_jit(qk, v, **options)

    low = lsh_jit(qk.astype(jnp.bfloat16), v.astype(jnp.bfloat16), **options)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), out, atol=0.1)

    dropout = dict(dropout_rate=0.5, dropout_rng=jax.random.key(1, impl="rbg"))
    dropped = lsh_jit(qk, v, **dropout, **options)
    np.testing.assert_array_equal(dropped, lsh_jit(qk, v, **dropout, **options))
    assert np.abs(np.asarray(dropped - out)).max() > 1e-2
    with pytest.raises(ValueError, match="dropout_rng"):
        lsh.lsh_attention(qk, v, dropout_rate=0.5, **options)


def test_heads_in_independent_parts_give_the_same_attention_and_gradients(qkv, padding):
    """The N heads attended in 1 or 2 slices (what XLA:CPU runs side by side)."""
    qk, v, cotangent = qkv
    options = dict(n_hashes=2, n_buckets=4, chunk_len=8, causal=True, mask=padding,
                   rotations=_rotations(7, 2, 2))
    whole = lsh_value_and_grads(qk, v, cotangent, parts=1, **options)
    _assert_all_close(lsh_value_and_grads(qk, v, cotangent, parts=2, **options), whole, tol=1e-6)
    with pytest.raises(ValueError, match="parts=3 must divide the 2 heads"):
        lsh.lsh_attention(qk, v, parts=3, **options)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override,match", [
    (dict(n_buckets=5), "n_buckets"),
    (dict(n_buckets=(4, 3)), "n_buckets"),
    (dict(chunk_len=0), "chunk_len"),
    (dict(chunks_before=-1), "chunks_before"),
    (dict(n_hashes=0), "n_hashes"),
    (dict(rotations=jnp.zeros((N, H, 2, 3))), "rotations"),
    (dict(rotations=None), "rng"),
    (dict(mask=jnp.ones((B, T + 1), bool)), "mask"),
    (dict(buckets=jnp.zeros((B, N, 3, T), jnp.int32)), "buckets"),
    (dict(n_buckets=2**16, chunk_len=2**15), "2\\*\\*31"),
])
def test_bad_input_raises_value_error(qkv, override, match):
    qk, v, _ = qkv
    options = dict(n_hashes=2, n_buckets=4, chunk_len=8, rotations=jnp.zeros((N, H, 2, 2)))
    options.update(override)
    with pytest.raises(ValueError, match=match):
        lsh.lsh_attention(qk, v, **options)
    with pytest.raises(ValueError, match=match):
        lsh.pattern(qk, qk, **options)


# ----------------------------------------------------------------------------- decoding


def _decode_rule_reference(qk, v, buckets, i, *, chunk_len, chunks_before, chunks_after,
                           attend_across_buckets, allow_duplicate_attention):
    """HF's decoding rule for token i, written as loops: qk, v `[B, T, N, H]` (positions 0..i
    used), buckets `[B, N, R, T]` -> `[B, N, H]`."""
    qk, v, buckets = (np.asarray(x, np.float64) for x in (qk, v, buckets))
    b_size, _, n_heads, h = qk.shape
    width = chunk_len * (1 + chunks_before + chunks_after)
    out = np.zeros((b_size, n_heads, v.shape[-1]))
    for b in range(b_size):
        for n in range(n_heads):
            entries = []  # (key position, same bucket as the query in that round)
            for r in range(buckets.shape[2]):
                order = sorted(range(i + 1), key=lambda j: (buckets[b, n, r, j], j))
                p = order.index(i)
                first = (p // chunk_len - chunks_before) * chunk_len
                for s in range(first, first + width):
                    j = order[s % (i + 1)]
                    entries.append((j, buckets[b, n, r, j] == buckets[b, n, r, i]))
            q = qk[b, i, n]
            logits, values = [], []
            for j, same in entries:
                k = qk[b, j, n] / np.sqrt(np.mean(qk[b, j, n] ** 2) + 1e-6) / np.sqrt(h)
                logit = lsh.SELF_LOGIT if j == i else q @ k
                if not attend_across_buckets and not same:
                    logit = lsh.MASKED_LOGIT
                if not allow_duplicate_attention:
                    count = sum(jj == j and (attend_across_buckets or s2) for jj, s2 in entries)
                    logit -= np.log(max(count, 1))
                logits.append(logit)
                values.append(v[b, j, n])
            w = np.exp(np.array(logits) - max(logits))
            out[b, n] = (w / w.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize("across,duplicates", [(True, True), (False, False)])
def test_decode_step_follows_hf_decoding_rule(across, duplicates):
    """Prefill 5 tokens, then decode 7 one at a time; each step equals the loop reference of the
    rule over the tokens so far (with the buckets the full hashing gives every token)."""
    t, options = 12, dict(n_hashes=2, n_buckets=4, chunk_len=4, chunks_before=1, chunks_after=0,
                          attend_across_buckets=across, allow_duplicate_attention=duplicates)
    qk, v = (jax.random.normal(key, (B, t, N, H)) for key in jax.random.split(jax.random.key(5)))
    rng = jax.random.key(9)
    buckets = lsh.hash_vectors(qk, n_hashes=2, n_buckets=4, rng=rng)
    prompt_out, cache = lsh.prefill(qk[:, :5], v[:, :5], max_len=t, rng=rng, **options)
    np.testing.assert_allclose(prompt_out, lsh.lsh_attention(
        qk[:, :5], v[:, :5], causal=True, rng=rng, **options), atol=1e-6)
    step = jax.jit(lambda a, b, c: lsh.decode_step(a, b, c, rng=rng, **options))
    for i in range(5, t):
        out, cache = step(qk[:, i:i + 1], v[:, i:i + 1], cache)
        expected = _decode_rule_reference(
            qk, v, buckets, i, **{k: options[k] for k in (
                "chunk_len", "chunks_before", "chunks_after", "attend_across_buckets",
                "allow_duplicate_attention")})
        np.testing.assert_allclose(out[:, 0], expected, atol=2e-5, err_msg=f"step {i}")
    np.testing.assert_array_equal(cache["buckets"], buckets)
    assert int(cache["index"]) == t


def test_decode_step_is_the_last_row_of_the_full_attention_where_they_coincide():
    """One round and whole chunks (no padding, no wrap across rounds): the rule is exactly the
    last row of causal `lsh_attention` over the tokens so far."""
    t, options = 16, dict(n_hashes=1, n_buckets=4, chunk_len=4, chunks_before=1, chunks_after=0)
    qk, v = (jax.random.normal(key, (B, t, N, H)) for key in jax.random.split(jax.random.key(6)))
    rng = jax.random.key(2)
    _, cache = lsh.prefill(qk[:, :3], v[:, :3], max_len=t, rng=rng, **options)
    step = jax.jit(lambda a, b, c: lsh.decode_step(a, b, c, rng=rng, **options))
    for i in range(3, t):
        out, cache = step(qk[:, i:i + 1], v[:, i:i + 1], cache)
        if i + 1 in (8, 16):
            full = lsh_jit(qk[:, :i + 1], v[:, :i + 1], causal=True, rng=rng, **options)
            np.testing.assert_allclose(out[:, 0], full[:, -1], atol=1e-5, err_msg=f"step {i}")
