"""Chunked local attention: HF parity, the dense oracle on its band, masking, causality and errors.

The parity vectors in tests/testdata/hf_reformer_local_*.npz are copies of ../shared/testdata (HF
transformers' `LocalSelfAttention`, chunk 8, one chunk before; see that folder's README).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnx.attention import dense, local

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
B, T, N, H = 2, 30, 2, 8  # 30 tokens: not a multiple of the chunk lengths used below
STATIC = ("chunk_len", "chunks_before", "chunks_after", "causal", "dropout_rate")
local_jit = jax.jit(local.local_attention, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def local_and_dense(q, k, v, cotangent, *, mask=None, **options):
    """Local attention and the dense oracle on local's pattern, each with its gradients wrt q, k, v."""
    pattern = local.pattern(q, k, mask=mask, **options)
    results = []
    for fn in (lambda *x: local.local_attention(*x, mask=mask, **options),
               lambda *x: dense.attention(*x, mask=pattern)):
        out, vjp = jax.vjp(fn, q, k, v)
        results.append((out,) + vjp(cotangent))
    return results


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.fixture(scope="module")
def qkv():
    return tuple(_normal(seed, (B, T, N, H)) for seed in range(4))  # q, k, v, cotangent


@pytest.mark.parametrize("name,jit", [("causal", False), ("bidirectional_padded", True)])
def test_matches_hf_local_self_attention(name, jit):
    data = np.load(os.path.join(TESTDATA, f"hf_reformer_local_{name}.npz"))
    meta = json.loads(str(data["meta"]))
    out = (local_jit if jit else local.local_attention)(*(jnp.asarray(data[x]) for x in "qkv"), chunk_len=meta["chunk_len"],
                    chunks_before=meta["chunks_before"], chunks_after=meta["chunks_after"],
                    causal=meta["causal"], mask=data["mask"] if meta["padded"] else None)
    rows = np.ones(data["mask"].shape, bool)
    if meta["padded"]:
        rows &= data["mask"]
    if not meta["causal"]:  # HF wraps the first chunk's look-back around to the last chunk
        rows[:, :meta["chunk_len"]] = False
    np.testing.assert_allclose(np.asarray(out)[rows], data["out"][rows], atol=1e-5, rtol=1e-5)


def test_pattern_is_the_chunked_band():
    q = jnp.zeros((1, 7, 1, 4))
    mask = jnp.array([[True] * 6 + [False]])
    got = np.asarray(local.pattern(q, q, chunk_len=2, chunks_before=1, chunks_after=0, mask=mask))[0, 0]
    chunk = np.arange(7) // 2
    want = ((chunk[:, None] - chunk[None, :]) >= 0) & ((chunk[:, None] - chunk[None, :]) <= 1)
    want[:, 6] = False  # padded key
    np.testing.assert_array_equal(got, want)
    assert got[0].sum() == 2  # the first chunk has no look-back: no wrap-around
    causal = local.pattern(q, q, chunk_len=2, chunks_before=0, chunks_after=1, causal=True)[0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.abs(chunk[:, None] - chunk[None, :]) == 0))


@pytest.mark.parametrize("options,padded", [
    (dict(chunk_len=8, chunks_before=1, chunks_after=0, causal=True), False),
    (dict(chunk_len=4, chunks_before=2, chunks_after=1, causal=False), True),
])
def test_equals_dense_on_its_pattern(qkv, options, padded):
    q, k, v, cotangent = qkv
    mask = (jnp.arange(T)[None, :] < jnp.array([[T], [T - 9]])) if padded else None
    got, want = local_and_dense(q, k, v, cotangent, mask=mask, **options)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_rows_without_keys_are_zero_and_padded_keys_get_no_gradient(qkv):
    q, k, v, cotangent = qkv
    mask = jnp.arange(T)[None, :] < jnp.array([[T - 3], [12]])
    options = dict(chunk_len=4, chunks_before=1, chunks_after=0, causal=False)
    (out, _, d_k, d_v), _ = local_and_dense(q, k, v, cotangent, mask=mask, **options)
    out, d_k, d_v = np.asarray(out), np.asarray(d_k), np.asarray(d_v)
    assert np.all(np.isfinite(out))
    # Example 1 is padded from token 12 on: chunks 4.. (tokens 16..) see no real key at all.
    assert np.all(out[1, 16:] == 0.0) and np.any(out[1, 12:16] != 0.0)
    padded = ~np.asarray(mask)
    assert np.all(d_k[padded] == 0.0) and np.all(d_v[padded] == 0.0)


def test_causality_by_gradients(qkv):
    q, k, v, _ = qkv
    options = dict(chunk_len=4, chunks_before=1, chunks_after=1, causal=True)
    fn = functools.partial(local.local_attention, **options)
    jacobians = jax.jit(jax.jacrev(fn, argnums=(1, 2)))(q[:1], k[:1], v[:1])
    for jac in jacobians:  # [1, Tq, N, H, 1, Tk, N, H]
        influence = np.abs(np.asarray(jac)).sum(axis=(0, 2, 3, 4, 6, 7))
        assert np.all(influence[np.triu_indices(T, 1)] == 0.0)
        assert np.count_nonzero(np.tril(influence, -1)) > T


def test_dropout(qkv):
    q, k, v, _ = qkv
    options = dict(chunk_len=8, chunks_before=1, chunks_after=0, causal=True)
    out = local_jit(q, k, v, **options)
    dropped = local_jit(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0, impl="rbg"), **options)
    assert np.abs(np.asarray(dropped - out)).max() > 1e-2
    with pytest.raises(ValueError, match="dropout_rng"):
        local.local_attention(q, k, v, dropout_rate=0.5, **options)


def test_independent_parts_give_the_same_attention_and_gradients(qkv):
    """The B * N groups computed in 1, 2 or 4 slices (what XLA:CPU runs side by side)."""
    q, k, v, cotangent = qkv
    mask = jnp.arange(T)[None, :] < jnp.array([[T], [T - 7]])

    @functools.partial(jax.jit, static_argnames="parts")
    def with_grads(q, k, v, parts):
        fn = lambda *x: local.local_attention(*x, chunk_len=8, causal=True, mask=mask,
                                              parts=parts)
        out, vjp = jax.vjp(fn, q, k, v)
        return (out,) + vjp(cotangent)

    whole = with_grads(q, k, v, parts=1)
    for parts in (2, 4):
        for got, want in zip(with_grads(q, k, v, parts=parts), whole):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="parts=3 must divide the 4 batch x heads groups"):
        local.local_attention(q, k, v, chunk_len=8, parts=3)


@pytest.mark.parametrize("override,match", [
    (dict(chunk_len=0), "chunk_len"),
    (dict(chunks_before=-1), "chunks_before"),
    (dict(chunks_after=1.5), "chunks_after"),
    (dict(mask=jnp.ones((B, T - 1), bool)), "mask"),
])
def test_bad_input_raises_value_error(qkv, override, match):
    q, k, v, _ = qkv
    options = {**dict(chunk_len=8), **override}
    with pytest.raises(ValueError, match=match):
        local.local_attention(q, k, v, **options)
    with pytest.raises(ValueError, match=match):
        local.pattern(q, k, **options)


def test_decode_step_equals_the_last_row_of_causal_local_attention(qkv):
    """Prefill 3 tokens, then decode the rest one at a time, across chunk boundaries."""
    q, k, v = (x[:, :20] for x in qkv[:3])
    options = dict(chunk_len=4, chunks_before=2)
    out, cache = local.prefill(q[:, :3], k[:, :3], v[:, :3], max_len=20, **options)
    steps = [out]
    step = jax.jit(lambda a, b, c, d: local.decode_step(a, b, c, d, **options))
    for i in range(3, 20):
        out, cache = step(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], cache)
        steps.append(out)
    full = local.local_attention(q, k, v, causal=True, **options)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
