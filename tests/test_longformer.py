"""Longformer sliding-window + global attention against HF parity vectors and dense oracles."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnx.attention import dense, longformer, registry

B, T, N, H = 2, 37, 2, 8
TESTDATA = pathlib.Path(__file__).parent / "testdata"
swa = longformer.sliding_window_attention


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Scan over several chunks of blocks even at these small sizes (the default budget would fit
    every test's blocks in one chunk; the HF parity test keeps the default)."""
    monkeypatch.setattr(longformer, "_CHUNK_BYTES", 2000)


@pytest.fixture(scope="module")
def inputs():
    """q, k, v, their global projections, a cotangent, a key padding mask and a global mask."""
    keys = jax.random.split(jax.random.key(0), 7)
    q, k, v, qg, kg, vg, cot = (jax.random.normal(key, (B, T, N, H)) for key in keys)
    key_mask = np.ones((B, T), bool)
    key_mask[1, -5:] = False
    global_mask = np.zeros((B, T), bool)
    global_mask[0, [0, 9, 20]] = True
    global_mask[1, [3, 34]] = True  # 34 is a padded token: global, but no one may attend to it
    return dict(q=q, k=k, v=v, qg=qg, kg=kg, vg=vg, cot=cot, key_mask=key_mask,
                global_mask=global_mask)


def _qkv(inputs):
    return inputs["q"], inputs["k"], inputs["v"]


def _vjp(fn, args, cot):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cot)


def _assert_close(actual, expected, atol=2e-6, rtol=2e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=atol, rtol=rtol)


def _band(t: int, window: int, dilation: int) -> np.ndarray:
    """Hand-written sliding-window pattern `[T, T]`."""
    return np.array([[abs(i - j) <= window * dilation and (i - j) % dilation == 0
                      for j in range(t)] for i in range(t)])


# ---------------------------------------------------------------------------------------------
# Parity with HF transformers' LongformerSelfAttention (PyTorch), global projections tied.


@pytest.mark.parametrize("name", ["hf_longformer_band.npz", "hf_longformer_band_global_padded.npz"])
def test_matches_hf_longformer(name, monkeypatch):
    monkeypatch.undo()  # the default chunk budget: one chunk
    data = np.load(TESTDATA / name)
    meta = json.loads(str(data["meta"]))
    assert data["global_mask"].sum() == 2 * meta["n_global"]
    fn = jax.jit(functools.partial(swa, window=meta["window_one_sided"], max_global=3))
    out = fn(data["q"], data["k"], data["v"], global_mask=data["global_mask"], mask=data["mask"])
    rows = data["mask"]
    _assert_close(np.asarray(out)[rows], data["out"][rows], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Exactness against dense attention.


@pytest.mark.parametrize("window,causal", [(T - 1, False), (100, True)])
def test_window_covering_sequence_is_full_attention(inputs, window, causal):
    ours = jax.jit(functools.partial(swa, window=window, causal=causal))
    theirs = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=causal))
    out_o, grads_o = _vjp(ours, _qkv(inputs), inputs["cot"])
    out_t, grads_t = _vjp(theirs, _qkv(inputs), inputs["cot"])
    _assert_close(out_o, out_t)
    for g_o, g_t in zip(grads_o, grads_t):
        _assert_close(g_o, g_t)


# (window, dilation, block_size, causal, with globals, max_global): several blocks and neighbour
# reaches, dilation not dividing T, a row with fewer global tokens than max_global.
TIED_CASES = [
    (3, 1, 4, False, True, 3),
    (2, 3, 3, True, True, 3),
    (5, 2, 2, False, False, None),
    (3, 1, None, True, True, 4),
]


@pytest.mark.parametrize("window,dilation,block_size,causal,with_globals,max_global", TIED_CASES)
def test_tied_projections_equal_dense_on_pattern(
    inputs, window, dilation, block_size, causal, with_globals, max_global
):
    options = dict(window=window, dilation=dilation, causal=causal, mask=inputs["key_mask"],
                   global_mask=inputs["global_mask"] if with_globals else None)
    ours = jax.jit(functools.partial(swa, block_size=block_size, max_global=max_global, **options))
    allowed = longformer.pattern(inputs["q"], inputs["k"], **options)
    oracle = jax.jit(functools.partial(dense.attention, mask=allowed))
    out_o, grads_o = _vjp(ours, _qkv(inputs), inputs["cot"])
    out_t, grads_t = _vjp(oracle, _qkv(inputs), inputs["cot"])
    _assert_close(out_o, out_t)
    for g_o, g_t in zip(grads_o, grads_t):
        _assert_close(g_o, g_t)


def test_untied_global_rows_use_global_projections(inputs):
    """Global rows: dense attention of qg over all of kg, vg; other rows: the tied pattern."""
    names = ("q", "k", "v", "qg", "kg", "vg")
    args = tuple(inputs[name] for name in names)
    key_mask, global_mask = inputs["key_mask"], inputs["global_mask"]
    options = dict(window=3, causal=True, mask=key_mask, global_mask=global_mask)

    @jax.jit
    def ours(q, k, v, qg, kg, vg):
        return swa(q, k, v, global_qkv=(qg, kg, vg), max_global=3, block_size=4, **options)

    @jax.jit
    def oracle(q, k, v, qg, kg, vg):
        local = dense.attention(q, k, v, mask=longformer.pattern(q, k, **options))
        rows = dense.attention(qg, kg, vg, mask=dense.key_padding_pattern(key_mask), causal=True)
        return jnp.where(global_mask[:, :, None, None], rows, local)

    out_o, grads_o = _vjp(ours, args, inputs["cot"])
    out_t, grads_t = _vjp(oracle, args, inputs["cot"])
    _assert_close(out_o, out_t)
    for name, g_o, g_t in zip(names, grads_o, grads_t):
        _assert_close(g_o, g_t, atol=5e-6)
        if name == "qg":  # only global rows read the global queries
            assert np.all(np.asarray(g_o)[~global_mask] == 0)

    # One global row written out by hand: batch 0, token 20, head 1, causal over keys 0..20.
    qg, kg, vg = (np.asarray(inputs[name], np.float64)[0, :, 1] for name in ("qg", "kg", "vg"))
    weights = np.exp(kg[:21] @ qg[20] / np.sqrt(H))
    expected = weights @ vg[:21] / weights.sum()
    np.testing.assert_allclose(np.asarray(out_o)[0, 20, 1], expected, atol=2e-6)


def test_padding_invariance(inputs):
    """Appending padded tokens (garbage values, one marked global) keeps the real rows unchanged."""
    extra = 11
    garbage = [1e3 * jax.random.normal(key, (B, extra, N, H))
               for key in jax.random.split(jax.random.key(1), 3)]
    q, k, v = (jnp.concatenate([x, g], axis=1) for x, g in zip(_qkv(inputs), garbage))
    key_mask = np.concatenate([inputs["key_mask"], np.zeros((B, extra), bool)], axis=1)
    global_mask = np.concatenate([inputs["global_mask"], np.zeros((B, extra), bool)], axis=1)
    global_mask[1, T + 2] = True
    fn = jax.jit(functools.partial(swa, window=3, dilation=2, block_size=4, max_global=3))
    short = fn(*_qkv(inputs), mask=inputs["key_mask"], global_mask=inputs["global_mask"])
    long = fn(q, k, v, mask=key_mask, global_mask=global_mask)
    real = inputs["key_mask"]
    _assert_close(np.asarray(long)[:, :T][real], np.asarray(short)[real])


# ---------------------------------------------------------------------------------------------
# Dependencies by gradients: out_i depends on key/value j exactly where the pattern allows it.


def _dependencies(fn, args, cot):
    """`[len(args), B, T, T]`: whether a gradient of out[b, i] w.r.t. args[.][b, j] is nonzero."""

    @jax.jit
    def dependencies(*args):
        _, pullback = jax.vjp(fn, *args)

        def row(i):
            grads = pullback(cot * (jnp.arange(T) == i)[None, :, None, None])
            return jnp.stack([jnp.abs(g).sum(axis=(2, 3)) for g in grads])  # [len(args), B, T]

        return jax.vmap(row, out_axes=2)(jnp.arange(T))

    return np.asarray(dependencies(*args)) > 0


@pytest.mark.parametrize("causal", [False, True])
def test_locality_by_gradients(inputs, causal):
    window, dilation = 3, 2
    fn = functools.partial(swa, window=window, dilation=dilation, causal=causal,
                           mask=inputs["key_mask"], block_size=4)
    dep_q, dep_k, dep_v = _dependencies(fn, _qkv(inputs), inputs["cot"])
    allowed = _band(T, window, dilation)[None] & inputs["key_mask"][:, None, :]
    if causal:
        allowed &= np.tri(T, dtype=bool)
    np.testing.assert_array_equal(dep_v, allowed)
    assert not np.any(dep_k & ~allowed)  # (a row with a single key has zero gradient w.r.t. it)
    assert not np.any(dep_q & ~np.eye(T, dtype=bool))


def test_causality_by_gradients_with_global_tokens(inputs):
    fn = functools.partial(swa, window=3, causal=True, global_mask=inputs["global_mask"],
                           mask=inputs["key_mask"], block_size=4)
    dep_q, dep_k, dep_v = _dependencies(fn, _qkv(inputs), inputs["cot"])
    future = ~np.tri(T, dtype=bool)
    for dep in (dep_q, dep_k, dep_v):
        assert not np.any(dep & future)
    # Global token 20 of row 0 reads every key before it; token 30 reads global keys 0, 9, 20.
    assert dep_v[0, 20, :21].all()
    np.testing.assert_array_equal(np.flatnonzero(dep_v[0, 30]), [0, 9, 20, 27, 28, 29, 30])


# ---------------------------------------------------------------------------------------------
# The pattern itself, written out by hand.


def test_dilation_pattern():
    x = jnp.zeros((1, 12, 1, 4))
    got = np.asarray(longformer.pattern(x, x, window=2, dilation=3))[0, 0]
    np.testing.assert_array_equal(np.flatnonzero(got[6]), [0, 3, 6, 9])
    np.testing.assert_array_equal(np.flatnonzero(got[1]), [1, 4, 7])
    np.testing.assert_array_equal(got, _band(12, 2, 3))

    global_mask = np.zeros((1, 12), bool)
    global_mask[0, 5] = True
    got = longformer.pattern(x, x, window=2, dilation=3, global_mask=global_mask, causal=True)
    got = np.asarray(got)[0, 0]
    np.testing.assert_array_equal(np.flatnonzero(got[6]), [0, 3, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(got[5]), [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.flatnonzero(got[2]), [2])


# ---------------------------------------------------------------------------------------------
# Contract details: jit and no jit, dtypes, fully masked rows, dropout, registry.


def test_eager_equals_jit_and_counts_globals(inputs):
    """Without jit, max_global is read off the concrete global mask."""
    options = dict(window=3, mask=inputs["key_mask"], global_mask=inputs["global_mask"],
                   block_size=4)
    eager = swa(*_qkv(inputs), **options)
    jitted = jax.jit(functools.partial(swa, max_global=3, **options))
    _assert_close(eager, jitted(*_qkv(inputs)), atol=1e-6)


def test_fully_masked_row_is_zero_and_bfloat16_statistics(inputs):
    key_mask = inputs["key_mask"].copy()
    key_mask[0] = False
    fn = jax.jit(functools.partial(swa, window=3, block_size=4, mask=key_mask,
                                   global_mask=inputs["global_mask"], max_global=3))
    out, grads = _vjp(fn, _qkv(inputs), inputs["cot"])
    assert np.all(np.asarray(out)[0] == 0)
    for g in grads:  # batch row 0 has no key: nothing flows back to it
        assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[0] == 0)

    out_bf16 = fn(*(x.astype(jnp.bfloat16) for x in _qkv(inputs)))
    assert out_bf16.dtype == jnp.bfloat16
    _assert_close(out_bf16.astype(jnp.float32), out, atol=3e-2, rtol=3e-2)


def test_dropout(inputs):
    args = _qkv(inputs)
    fn = functools.partial(swa, window=3, block_size=4, global_mask=inputs["global_mask"],
                           max_global=3, dropout_rate=0.5)
    with pytest.raises(ValueError, match="dropout_rng"):
        fn(*args)
    with pytest.raises(ValueError, match="dropout_rate"):
        fn(*args, dropout_rate=1.0, dropout_rng=jax.random.key(3))

    @jax.jit
    def out_and_grads(rng, *args):
        out, pullback = jax.vjp(functools.partial(fn, dropout_rng=rng), *args)
        return out, pullback(inputs["cot"])

    rng = jax.random.key(3, impl="rbg")  # any key type works; rbg compiles fast
    first, grads = out_and_grads(rng, *args)
    _assert_close(out_and_grads(rng, *args)[0], first, atol=0, rtol=0)
    other = out_and_grads(jax.random.key(4, impl="rbg"), *args)[0]
    assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3  # the key matters

    # The hand-written backward applies the forward's dropout mask: the gradient along a random
    # direction equals a central finite difference.
    direction = [jax.random.normal(key, x.shape)
                 for key, x in zip(jax.random.split(jax.random.key(5), 3), args)]
    eps = 1e-2
    plus, minus = (out_and_grads(rng, *(x + sign * eps * u for x, u in zip(args, direction)))[0]
                   for sign in (1, -1))
    numeric = np.vdot(np.asarray(plus, np.float64) - np.asarray(minus, np.float64),
                      np.asarray(inputs["cot"], np.float64)) / (2 * eps)
    analytic = sum(np.vdot(np.asarray(g, np.float64), np.asarray(u, np.float64))
                   for g, u in zip(grads, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=2e-3)


def test_registry_entry():
    mechanism = registry.get("longformer")
    assert mechanism.fn is longformer.sliding_window_attention
    assert mechanism.pattern_fn is longformer.pattern
    assert mechanism.global_projections and mechanism.key_padding_mask


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(window=0), "window"),
        (dict(window=-2), "window"),
        (dict(window=2.5), "window"),
        (dict(window=3, dilation=0), "dilation"),
        (dict(window=3, global_mask=np.zeros((B, T + 1), bool)), "global_mask"),
        (dict(window=3, global_mask=np.zeros((T,), bool)), "global_mask"),
        (dict(window=3, mask=np.ones((B, 1, 1, T), bool)), "mask"),
        (dict(window=3, global_mask=np.ones((B, T), bool), max_global=2), "max_global"),
        (dict(window=3, global_qkv=(None, None, None)), "global_qkv"),
        (dict(window=3, block_size=0), "block_size"),
    ],
)
def test_bad_input_raises(inputs, options, match):
    with pytest.raises(ValueError, match=match):
        swa(*_qkv(inputs), **options)


def test_bad_global_projections_and_traced_global_mask(inputs):
    q, k, v = _qkv(inputs)
    global_mask = inputs["global_mask"]
    with pytest.raises(ValueError, match="global_qkv"):
        swa(q, k, v, window=3, global_mask=global_mask, global_qkv=(q, k[:, :-1], v))
    traced = jax.jit(lambda g: swa(q, k, v, window=3, global_mask=g))
    with pytest.raises(ValueError, match="max_global"):
        traced(global_mask)
    with pytest.raises(ValueError, match="window"):
        longformer.pattern(q, k, window=0)


# ---------------------------------------------------------------------------------------------
# Dropout entry by entry: one-hot values make every output row the row's (dropped) weights.


def _weights_oracle(q: np.ndarray, k: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax weights `[B, N, T, T]` in float64 over the allowed keys (`allowed` `[B, T, T]`),
    written out in NumPy: q, k `[B, T, N, H]`."""
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(allowed[:, None], logits, -np.inf)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dilation", [1, 2])
def test_dropout_is_drawn_per_entry(inputs, dilation):
    """With v[j] = e_j, out[b, i, n] is row i of head n's weights after dropout: each allowed
    entry is either weight / (1 - rate) or 0, ~rate of them are 0, and the drop patterns are not
    copies of one another across heads, batch rows or positions (as a mask reused per chunk of
    blocks, per subsequence of the dilation, per head or per batch row would make them)."""
    window, rate = 3, 0.3
    key_mask, global_mask = inputs["key_mask"], inputs["global_mask"]
    qk = jax.random.normal(jax.random.key(6), (2, B, T, N, T))
    v = jnp.broadcast_to(jnp.eye(T)[None, :, None, :], (B, T, N, T))  # head_dim T: one-hot keys
    fn = jax.jit(functools.partial(
        swa, window=window, dilation=dilation, block_size=4, mask=key_mask,
        global_mask=global_mask, max_global=3, dropout_rate=rate))
    out = np.asarray(fn(qk[0], qk[1], v, dropout_rng=jax.random.key(7, impl="rbg")))
    out = out.transpose(0, 2, 1, 3)  # [B, N, T (query), T (key)]

    band = _band(T, window, dilation)[None] & ~global_mask[:, None, :]  # band keys: not global
    allowed = (band | global_mask[:, :, None] | global_mask[:, None, :]) & key_mask[:, None, :]
    weights = _weights_oracle(np.asarray(qk[0], np.float64), np.asarray(qk[1], np.float64),
                              allowed)
    allowed = np.broadcast_to(allowed[:, None], out.shape)
    assert np.all(out[~allowed] == 0)
    dropped = out == 0
    kept = np.isclose(out, weights / (1 - rate), rtol=1e-4, atol=0) & ~dropped
    assert np.all((kept | dropped)[allowed])
    fraction = dropped[allowed].mean()
    assert abs(fraction - rate) < 5 * np.sqrt(rate * (1 - rate) / allowed.sum())

    # The band entries of rows that are not global (those the banded computation produces).
    band_rows = band & ~global_mask[:, :, None] & key_mask[:, None, :]  # [B, T, T]
    band_rows = np.broadcast_to(band_rows[:, None], out.shape)
    assert abs(dropped[band_rows].mean() - rate) < 5 * np.sqrt(
        rate * (1 - rate) / band_rows.sum())

    def differ(x: np.ndarray, y: np.ndarray, where: np.ndarray) -> bool:
        assert where.sum() >= 20  # enough entries that equal patterns cannot be chance
        return bool(np.any(x[where] != y[where]))

    assert differ(dropped[:, 0], dropped[:, 1], band_rows[:, 0])  # heads
    assert differ(dropped[0], dropped[1], band_rows[0] & band_rows[1])  # batch rows
    # Positions: row i's band entries against row i + s's, for every shift s, at the same offsets
    # (i, j) ~ (i + s, j + s) and at the same keys (i, j) ~ (i + s, j). A mask reused across
    # chunks of blocks, across the blocks of one chunk, across the subsequences of the dilation or
    # across the rows of a block makes many such row pairs drop exactly the same entries; drawn
    # independently, a pair with >= 5 band entries in common matches with probability
    # <= (rate**2 + (1 - rate)**2)**5 < 0.07.
    pad = [(0, 0)] * 3 + [(0, T)]  # keys past the end: not in the band
    dropped_p, band_p = np.pad(dropped, pad), np.pad(band_rows, pad)
    checked = 0
    for s in range(1, T):
        for key_shift in (s, 0):
            later = np.s_[..., s:, key_shift:key_shift + T]
            common = band_p[later] & band_rows[..., :-s, :]  # [B, N, T - s, T]
            same = np.all((dropped_p[later] == dropped[..., :-s, :]) | ~common, axis=-1)
            pairs = common.sum(axis=-1) >= 5
            if pairs.sum() >= 20:
                checked += 1
                assert same[pairs].mean() < 0.3, (s, key_shift)
    assert checked > T // 2


def test_constant_global_mask_is_not_folded_at_compile_time(inputs):
    """A classifier's global mask ([CLS]) is a constant under jit; XLA must not constant-fold the
    ops on it (its evaluator ran the argsort element by element: ~1 s per [32, 1024] row block and
    layer of compile time), so the compiled computation still sorts at run time."""
    q, k, v = _qkv(inputs)

    @jax.jit
    def fn(q, k, v):
        global_mask = jnp.zeros((B, T), bool).at[:, 0].set(True)
        return swa(q, k, v, window=3, block_size=4, global_mask=global_mask, max_global=1)

    hlo = fn.lower(q, k, v).compile().as_text()
    assert " sort(" in hlo
    allowed = np.zeros((B, T, T), bool)
    allowed[:] = _band(T, 3, 1)
    allowed[:, 0, :] = allowed[:, :, 0] = True
    _assert_close(fn(q, k, v), dense.attention(q, k, v, mask=allowed[:, None]))
