"""Cross-modality attention: `attnx/attention/cross.py` and the modules of `attnx/layers/cross.py`.

The function on dense and flash equals the dense oracle on its pattern (and, for dense,
`jax.nn.dot_product_attention`), forward and gradients; masked keys with any values change
nothing; permuting keys leaves the output, permuting queries permutes it; a sequence crossed
with itself is self-attention. The modules equal hand-composed formulas over the dense oracle
with their own parameters, plus each one's own property: one key/value token, symmetry of shared
co-attention, the gated block's identity at initialisation and its media restriction, the
Perceiver's fixed output size and input gradients. Bad input: ValueError naming the modality and
the argument. Everything runs eagerly on tiny shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx.attention import cross, dense
from attnx.layers.attention import MultiHeadAttention
from attnx.layers.cross import CoAttention, CrossAttention, GatedCrossAttention, PerceiverResampler

B, TQ, TK, N, H = 2, 5, 7, 2, 4
D_TEXT, D_IMAGE = 8, 12
MECHANISMS = {"dense": {}, "flash": dict(block_q=4, block_k=4, implementation="xla")}


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def _qkv(seed: int = 0, tq: int = TQ, tk: int = TK):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (B, tq, N, H)), jax.random.normal(keys[1], (B, tk, N, H)),
            jax.random.normal(keys[2], (B, tk, N, H)))


# Row 1: its last two queries and last three keys are padding; row 0 is all real.
Q_MASK = jnp.ones((B, TQ), bool).at[1, TQ - 2:].set(False)
KV_MASK = jnp.ones((B, TK), bool).at[1, TK - 3:].set(False)


def _features(seed: int, t: int, d: int):
    return jax.random.normal(jax.random.key(seed), (B, t, d))


# ----------------------------------------------------------------------------- the function


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_equals_dense_oracle_forward_and_gradients(mechanism):
    q, k, v = _qkv()
    cot = jax.random.normal(jax.random.key(1), q.shape)
    allowed = cross.pattern(q, k, q_mask=Q_MASK, kv_mask=KV_MASK)

    def ours(q, k, v):
        return cross.cross_attention(q, k, v, q_mask=Q_MASK, kv_mask=KV_MASK,
                                     mechanism=mechanism, **MECHANISMS[mechanism])

    def oracle(q, k, v):
        return dense.attention(q, k, v, mask=allowed)

    out, vjp = jax.vjp(ours, q, k, v)
    want, want_vjp = jax.vjp(oracle, q, k, v)
    _close(out, want)
    for grad, want_grad in zip(vjp(cot), want_vjp(cot)):
        assert np.abs(np.asarray(want_grad)).max() > 1e-3  # not trivially equal
        _close(grad, want_grad)
    np.testing.assert_array_equal(out[1, TQ - 2:], 0.0)  # padded queries
    # An independent oracle: jax.nn's attention with the outer-product mask (on real queries).
    jax_out = jax.nn.dot_product_attention(q, k, v, mask=allowed)
    _close(out[0], jax_out[0])
    _close(out[1, : TQ - 2], jax_out[1, : TQ - 2])


def test_query_with_no_key_returns_zeros():
    q, k, v = _qkv()
    no_keys = KV_MASK.at[0].set(False)
    for mechanism, options in MECHANISMS.items():
        out = cross.cross_attention(q, k, v, kv_mask=no_keys, mechanism=mechanism, **options)
        np.testing.assert_array_equal(out[0], 0.0)
        assert np.abs(np.asarray(out[1])).min() > 0


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_extra_masked_keys_with_any_values_change_nothing(mechanism):
    q, k, v = _qkv()
    extra_k, extra_v = 1e4 * jax.random.normal(jax.random.key(5), (2, B, 3, N, H))
    k2, v2 = jnp.concatenate([k, extra_k], 1), jnp.concatenate([v, extra_v], 1)
    mask2 = jnp.concatenate([KV_MASK, jnp.zeros((B, 3), bool)], 1)
    options = MECHANISMS[mechanism]
    out = cross.cross_attention(q, k, v, q_mask=Q_MASK, kv_mask=KV_MASK, mechanism=mechanism,
                                **options)
    out2 = cross.cross_attention(q, k2, v2, q_mask=Q_MASK, kv_mask=mask2, mechanism=mechanism,
                                 **options)
    _close(out2, out)


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_permuting_keys_changes_nothing_permuting_queries_permutes(mechanism):
    q, k, v = _qkv()
    options = MECHANISMS[mechanism]
    kp, qp = np.random.default_rng(0).permutation(TK), np.random.default_rng(1).permutation(TQ)

    def run(q, k, v, q_mask, kv_mask):
        return cross.cross_attention(q, k, v, q_mask=q_mask, kv_mask=kv_mask, mechanism=mechanism,
                                     **options)

    out = run(q, k, v, Q_MASK, KV_MASK)
    _close(run(q, k[:, kp], v[:, kp], Q_MASK, KV_MASK[:, kp]), out)
    _close(run(q[:, qp], k, v, Q_MASK[:, qp], KV_MASK), out[:, qp])


def test_a_sequence_crossed_with_itself_is_self_attention():
    q, k, v = _qkv(tk=TQ)
    kv_mask = Q_MASK
    want = dense.attention(q, k, v, mask=dense.key_padding_pattern(kv_mask))
    for mechanism, options in MECHANISMS.items():
        _close(cross.cross_attention(q, k, v, kv_mask=kv_mask, mechanism=mechanism, **options),
               want)
    # The module, with MultiHeadAttention's parameters, is that module's self-attention.
    x = _features(2, TQ, D_TEXT)
    self_attention = MultiHeadAttention(D_TEXT, N, rngs=nnx.Rngs(0))
    module = CrossAttention(D_TEXT, D_TEXT, N, rngs=nnx.Rngs(1))
    nnx.update(module, nnx.state(self_attention, nnx.Param))
    _close(module(x, x, kv_mask=kv_mask), self_attention(x, mask=kv_mask))


def test_pair_mask_narrows_the_pattern():
    q, k, v = _qkv()
    pairs = jax.random.bernoulli(jax.random.key(3), 0.5, (B, TQ, TK))
    out = cross.cross_attention(q, k, v, q_mask=Q_MASK, kv_mask=KV_MASK, pair_mask=pairs)
    allowed = cross.pattern(q, k, q_mask=Q_MASK, kv_mask=KV_MASK, pair_mask=pairs)
    np.testing.assert_array_equal(allowed[:, 0], pairs & Q_MASK[:, :, None] & KV_MASK[:, None])
    _close(out, dense.attention(q, k, v, mask=allowed))


# ----------------------------------------------------------------------------- the modules


def _heads(x):
    return x.reshape(x.shape[:2] + (N, -1))


def _module_oracle(m: CrossAttention, x_q, x_kv, q_mask=None, kv_mask=None, pair_mask=None):
    """`m`'s forward written out with its parameters and the dense oracle."""
    q, k, v = (_heads(proj(x)) for proj, x in ((m.query, x_q), (m.key, x_kv), (m.value, x_kv)))
    allowed = cross.pattern(q, k, q_mask=q_mask, kv_mask=kv_mask, pair_mask=pair_mask)
    out = dense.attention(q, k, v, mask=allowed)
    return m.out(out.reshape(out.shape[:2] + (-1,)))


def test_cross_attention_module_equals_oracle_on_dense_and_flash():
    x_q, x_kv = _features(0, TQ, D_TEXT), _features(1, TK, D_IMAGE)
    module = CrossAttention(D_TEXT, D_IMAGE, N, rngs=nnx.Rngs(0))
    want = _module_oracle(module, x_q, x_kv, Q_MASK, KV_MASK)
    _close(module(x_q, x_kv, q_mask=Q_MASK, kv_mask=KV_MASK), want)
    flash = CrossAttention(D_TEXT, D_IMAGE, N, mechanism="flash",
                           options=MECHANISMS["flash"], rngs=nnx.Rngs(0))
    _close(flash(x_q, x_kv, q_mask=Q_MASK, kv_mask=KV_MASK), want)
    # Padded queries give the output projection of zero: its bias.
    _close(want[1, TQ - 2:], jnp.broadcast_to(module.out.bias[...], (2, D_TEXT)))


def test_one_key_value_token_gives_every_query_its_value_projection():
    x_q, x_kv = _features(0, TQ, D_TEXT), _features(1, 1, D_IMAGE)
    module = CrossAttention(D_TEXT, D_IMAGE, N, rngs=nnx.Rngs(0))
    want = module.out(module.value(x_kv))  # [B, 1, D]
    _close(module(x_q, x_kv), jnp.broadcast_to(want, (B, TQ, D_TEXT)))


def test_co_attention_equals_oracle_and_shared_is_symmetric():
    a, b = _features(0, TQ, D_TEXT), _features(1, TK, D_IMAGE)
    co = CoAttention(D_TEXT, D_IMAGE, N, names=("text", "image"), rngs=nnx.Rngs(0))
    a_out, b_out = co(a, b, a_mask=Q_MASK, b_mask=KV_MASK)
    h_a, h_b = co.norm_a(a), co.norm_b(b)
    _close(a_out, a + _module_oracle(co.a_from_b, h_a, h_b, Q_MASK, KV_MASK))
    _close(b_out, b + _module_oracle(co.b_from_a, h_b, h_a, KV_MASK, Q_MASK))
    assert co.a_from_b is not co.b_from_a
    # Shared (LXMERT): swapping the streams swaps the outputs.
    shared = CoAttention(D_TEXT, D_TEXT, N, shared=True, rngs=nnx.Rngs(1))
    b = _features(2, TK, D_TEXT)
    a_out, b_out = shared(a, b, a_mask=Q_MASK, b_mask=KV_MASK)
    b_swap, a_swap = shared(b, a, a_mask=KV_MASK, b_mask=Q_MASK)
    _close(a_swap, a_out)
    _close(b_swap, b_out)
    assert np.abs(np.asarray(a_out - a)).max() > 1e-3
    n_shared = sum(x.size for x in jax.tree.leaves(nnx.state(shared, nnx.Param)))
    n_separate = sum(x.size for x in jax.tree.leaves(nnx.state(
        CoAttention(D_TEXT, D_TEXT, N, rngs=nnx.Rngs(1)), nnx.Param)))
    assert 2 * n_shared == n_separate


def _gated(only_immediate_media: bool = False) -> GatedCrossAttention:
    return GatedCrossAttention(D_TEXT, D_IMAGE, N, d_ff=16,
                               only_immediate_media=only_immediate_media, rngs=nnx.Rngs(0))


def test_gated_block_is_the_identity_at_initialisation_and_equals_oracle_when_open():
    x, media = _features(0, TQ, D_TEXT), _features(1, TK, D_IMAGE)
    block = _gated()
    assert float(block.alpha[...]) == float(block.beta[...]) == 0.0
    np.testing.assert_array_equal(block(x, media, x_mask=Q_MASK, media_mask=KV_MASK), x)
    block.alpha[...] = jnp.asarray(0.7)
    block.beta[...] = jnp.asarray(-0.4)
    h = x + np.tanh(0.7) * _module_oracle(block.attention, block.attention_norm(x), media,
                                          Q_MASK, KV_MASK)
    want = h + np.tanh(-0.4) * block.feed_forward(block.feed_forward_norm(h))
    _close(block(x, media, x_mask=Q_MASK, media_mask=KV_MASK), want)


def test_only_immediate_media():
    """Media items 0 (tokens 0-2) and 1 (tokens 3-6); text tokens 0-1 come before any media,
    2-3 after item 0, 4 after item 1. Gradients say which media each text token depends on."""
    x, media = _features(0, TQ, D_TEXT), _features(1, TK, D_IMAGE)
    media_ids = jnp.broadcast_to(jnp.array([0, 0, 0, 1, 1, 1, 1]), (B, TK))
    media_index = jnp.broadcast_to(jnp.array([-1, -1, 0, 0, 1]), (B, TQ))
    block = _gated(only_immediate_media=True)
    block.alpha[...] = jnp.asarray(1.0)
    block.beta[...] = jnp.asarray(1.0)

    def influence(only_immediate):
        block.only_immediate_media = only_immediate
        jac = jax.jacobian(lambda m: block(x, m, media_index=media_index, media_ids=media_ids))(
            media)  # [B, T, D, B, M, Dm]
        return np.abs(np.asarray(jac)).sum(axis=(2, 3, 5))[0]  # [T, M] of row 0

    immediate, previous = influence(True), influence(False)
    assert (immediate[:2] == 0).all() and (previous[:2] == 0).all()  # before the first media
    seen = np.array([[0, 0, 0, 1, 1, 1, 1]]) <= np.array([[-1], [-1], [0], [0], [1]])
    same = np.array([[0, 0, 0, 1, 1, 1, 1]]) == np.array([[-1], [-1], [0], [0], [1]])
    np.testing.assert_array_equal(immediate > 0, same)
    np.testing.assert_array_equal(previous > 0, seen)
    # Text before the first media item is the block's no-media output, whatever the media.
    block.only_immediate_media = True
    out = block(x, media, media_index=media_index, media_ids=media_ids)
    out2 = block(x, 100 * media, media_index=media_index, media_ids=media_ids)
    np.testing.assert_array_equal(out[:, :2], out2[:, :2])


def test_perceiver_output_size_is_fixed_and_every_input_token_gets_gradient():
    resampler = PerceiverResampler(D_IMAGE, D_TEXT, 3, N, d_ff=16, num_layers=2,
                                   rngs=nnx.Rngs(0))
    for length in (1, 4, 100):
        shape = jax.eval_shape(resampler, jax.ShapeDtypeStruct((B, length, D_IMAGE), jnp.float32))
        assert shape.shape == (B, 3, D_TEXT)
    x = _features(1, TK, D_IMAGE)
    weights = jax.random.normal(jax.random.key(2), (B, 3, D_TEXT))
    graphdef, state = nnx.split(resampler)
    grad = jax.jit(jax.grad(lambda x, state: (nnx.merge(graphdef, state)(x, mask=KV_MASK)
                                              * weights).sum()))(x, state)
    per_token = np.abs(np.asarray(grad)).sum(-1)
    assert (per_token[KV_MASK] > 1e-6).all()
    np.testing.assert_array_equal(per_token[~KV_MASK], 0.0)  # padding gets none
    # One layer written out with the dense oracle.
    z = resampler.latents[...][None].repeat(B, 0)
    h = resampler.input_norm(x)
    for attend, norm, ff, ff_norm in zip(resampler.attentions, resampler.attention_norms,
                                         resampler.feed_forwards, resampler.feed_forward_norms):
        z = z + _module_oracle(attend, norm(z), h, kv_mask=KV_MASK)
        z = z + ff(ff_norm(z))
    _close(resampler(x, mask=KV_MASK), resampler.final_norm(z))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_modality_and_the_argument():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"mechanism='lsh' cannot attend .*Tq != Tk.*dense"):
        cross.cross_attention(q, k, v, mechanism="lsh")
    with pytest.raises(ValueError, match=r"Tq != Tk"):
        CrossAttention(D_TEXT, D_IMAGE, N, mechanism="lsh", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"kv_mask \(the key/value modality\) must be \(2, 7\)"):
        cross.cross_attention(q, k, v, kv_mask=Q_MASK)
    with pytest.raises(ValueError, match=r"q_mask \(the query modality\)"):
        cross.cross_attention(q, k, v, q_mask=KV_MASK)
    with pytest.raises(ValueError, match=r"k \(the key/value modality\).*head_dim"):
        cross.cross_attention(q, k[..., :2], v[..., :2])
    with pytest.raises(ValueError, match=r"pair_mask needs .*full.*'flash'"):
        cross.cross_attention(q, k, v, pair_mask=jnp.ones((B, TQ, TK), bool),
                              mechanism="flash")
    with pytest.raises(ValueError, match=r"pair_mask needs"):
        GatedCrossAttention(D_TEXT, D_IMAGE, N, d_ff=16, only_immediate_media=True,
                            mechanism="flash", rngs=nnx.Rngs(0))
    module = CrossAttention(D_TEXT, D_IMAGE, N, names=("text", "image"), rngs=nnx.Rngs(0))
    x_t, x_i = _features(0, TQ, D_TEXT), _features(1, TK, D_IMAGE)
    with pytest.raises(ValueError, match=r"x_kv \(the image modality\) must be \[batch, length, "
                                         r"12\]"):
        module(x_t, x_t)
    with pytest.raises(ValueError, match=r"x_q \(the text modality\) must be"):
        module(x_i, x_i)
    with pytest.raises(ValueError, match=r"kv_mask \(the image modality\) must be a padding"):
        module(x_t, x_i, kv_mask=Q_MASK)
    co = CoAttention(D_TEXT, D_IMAGE, N, names=("text", "image"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"b \(the image modality\) must be \[batch, length, 12"):
        co(x_t, x_t)
    with pytest.raises(ValueError, match=r"shared co-attention needs equal widths; the text"):
        CoAttention(D_TEXT, D_IMAGE, N, shared=True, names=("text", "image"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"only_immediate_media needs media_index"):
        _gated(True)(x_t, x_i)
    with pytest.raises(ValueError, match=r"x \(the input modality\) must be \[batch, length, 12"):
        PerceiverResampler(D_IMAGE, D_TEXT, 3, N, d_ff=16, rngs=nnx.Rngs(0))(x_t)
