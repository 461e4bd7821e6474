"""Transformer models: causality by gradients, cache decoding, padding, config errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from attnx import config_lib, models
from attnx.models import cnn


def _model(name, **overrides):
    sizes = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64, max_len=32)
    cfg = config_lib.transformer_model(name, **{**sizes, **overrides})
    return models.build(cfg, vocab_size=20, num_classes=3)


@pytest.fixture(scope="module")
def lm():
    return _model("transformer_lm")


def _input_gradient_norms(fn, x_emb, out_pos):
    """|d out[:, out_pos] / d x_emb[:, j]| for every j."""
    grad = jax.grad(lambda x: fn(x)[:, out_pos].sum())(x_emb)
    return np.abs(np.asarray(grad)).sum(axis=(0, 2))


@pytest.mark.parametrize("use_jit", [False, True])
def test_lm_is_causal_by_gradients(lm, use_jit):
    ids = jax.random.randint(jax.random.key(0), (2, 12), 0, 20)
    emb = lm.embed.tokens(ids)

    def from_embeddings(x):
        h = lm.embed.position(x * lm.embed.scale)
        return lm.lm_head(lm.decoder(h, causal=True))

    fn = jax.jit(from_embeddings) if use_jit else from_embeddings
    norms = _input_gradient_norms(fn, emb, 5)
    assert np.all(norms[6:] == 0.0), norms
    assert np.all(norms[:6] > 0.0), norms


def test_kv_cache_decoding_equals_full_forward(lm):
    ids = jax.random.randint(jax.random.key(1), (2, 10), 0, 20)
    full = lm(ids)
    caches = lm.init_caches(2, 16)
    logits, caches = lm.decode(ids[:, :7], caches)
    steps = [logits]
    for t in range(7, 10):
        logits, caches = lm.decode(ids[:, t:t + 1], caches)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=2e-5)


def test_lm_dropout_depends_on_rng_only(lm):
    lm_drop = _model("transformer_lm", dropout_rate=0.3)
    ids = jnp.arange(8)[None] % 20
    a = lm_drop(ids, rng=jax.random.key(0))
    b = lm_drop(ids, rng=jax.random.key(0))
    c = lm_drop(ids, rng=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(lm_drop(ids), lm_drop(ids))


def test_classifier_ignores_padding():
    clf = _model("transformer_classifier", pool="mean")
    ids = jax.random.randint(jax.random.key(2), (1, 10), 1, 20)
    mask = jnp.arange(10)[None] < 6
    other = jnp.where(mask, ids, 7)  # different tokens in the padded positions
    np.testing.assert_allclose(clf(ids, mask), clf(other, mask), atol=1e-5)
    assert clf(ids, mask).shape == (1, 3)


def test_seq2seq_decoder_is_causal_and_sees_all_inputs():
    s2s = _model("transformer_seq2seq", norm="post")
    inputs = jax.random.randint(jax.random.key(3), (1, 8), 1, 20)
    mask = jnp.ones((1, 8), bool)
    dec = jax.random.randint(jax.random.key(4), (1, 6), 1, 20)
    memory = s2s.encode(inputs, mask)

    def out_at_2(mem):
        return s2s.decode(dec, mem, mask)[:, 2].sum()

    g_mem = np.abs(np.asarray(jax.grad(out_at_2)(memory))).sum(axis=(0, 2))
    assert np.all(g_mem > 0)
    dec_emb = s2s.embed.tokens(dec)

    def from_dec_emb(x):
        h = s2s.embed.position(x * s2s.embed.scale)
        return s2s.lm_head(s2s.decoder(h, causal=True, memory=memory, memory_mask=mask))

    norms = _input_gradient_norms(from_dec_emb, dec_emb, 2)
    assert np.all(norms[3:] == 0.0) and np.all(norms[:3] > 0.0)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="num_heads=3 must divide model.d_model=32"):
        _model("transformer_lm", num_heads=3)
    with pytest.raises(ValueError, match="unknown attention mechanism 'nope'"):
        _model("transformer_lm", attention="nope")
    with pytest.raises(ValueError, match="unknown model 'nope'; known models: .*transformer_lm"):
        models.get_entry("nope")
    with pytest.raises(ValueError, match="does not take"):
        models.build(ml_collections.ConfigDict(dict(name="transformer_lm", widht=3)),
                     vocab_size=4)
    lm = _model("transformer_lm")
    with pytest.raises(ValueError, match="max_len=32"):
        lm(jnp.zeros((1, 40), jnp.int32))


def test_params_are_all_params(lm):
    graphdef, params, rest = nnx.split(lm, nnx.Param, ...)
    assert not jax.tree.leaves(rest)


def test_attention_map_images_show_the_causal_pattern(lm):
    from attnx import attention_maps

    ids = jax.random.randint(jax.random.key(5), (1, 12), 0, 20)
    maps = lm.attention_maps(ids)
    assert len(maps) == 2 and maps[0].shape == (1, 4, 12, 12)
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, rtol=1e-5)
    image = attention_maps.layer_images(maps, max_pixels=6)["attention/layer_1"]
    assert image.shape == (6, 4 * 7 - 1)
    head = image[:, :6]  # 12 x 12 max-pooled by 2
    assert np.all(np.triu(head, 1) == 0.0) and np.all(np.diag(head) > 0.0)
    assert np.all(image[:, 6] == 1.0)  # separator column


def test_convnet_first_stride_subsamples_the_first_convolution():
    """`first_stride=2`: the first convolution is the stride-1 one (same weights) read at every
    other pixel (SAME padding on an even map puts stride 2's windows at odd centres)."""
    plain = cnn.ConvNet(cnn.ConvNetConfig(num_classes=2, image_shape=(8, 8, 1), channels=(3, 4)),
                        rngs=nnx.Rngs(0))
    strided = cnn.ConvNet(cnn.ConvNetConfig(num_classes=2, image_shape=(8, 8, 1), channels=(3, 4),
                                            first_stride=2), rngs=nnx.Rngs(0))
    image = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    full, subsampled = plain.convs[0](image), strided.convs[0](image)
    assert subsampled.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(subsampled, full[:, 1::2, 1::2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model.first_stride must be 1 or 2, got 3"):
        cnn.ConvNetConfig(num_classes=2, image_shape=(8, 8, 1), first_stride=3)
