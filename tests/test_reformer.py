"""ReformerLM: reversible gradients with LSH and dropout, causality, the Full attention mode,
incremental decoding and attention maps, config errors, the duplication task's rows, and a
`reformer_lm:smoke` run end to end."""

import importlib.util
import math
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx import decoding, models
from attnx.attention import dense
from attnx.data import duplication
from attnx.models.reformer import AttentionBranch, ReformerConfig, ReformerLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 32  # sequence length of the small models
FULL = dict(n_hashes=1, chunk_len=T, chunks_before=0, chunks_after=0)  # one chunk: every key


def _settings(**overrides) -> ReformerConfig:
    fields = dict(
        vocab_size=20, d_model=32, num_heads=2, d_ff=64, attn_layers=("local", "lsh"),
        lsh_options=dict(n_hashes=2, n_buckets=4, chunk_len=8, chunks_before=1, chunks_after=0),
        local_options=dict(chunk_len=8), axial_shape=(4, 8), axial_dims=(8, 24), ff_chunk_len=12,
        dropout_rate=0.1, attention_dropout=0.1)
    fields.update(overrides)
    return ReformerConfig(**fields)


def _load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def model() -> ReformerLM:
    return ReformerLM(_settings(), rngs=nnx.Rngs(0))


def _logits_from_embeddings(model: ReformerLM, x: jax.Array, rng: jax.Array) -> jax.Array:
    """`ReformerLM.__call__` after the token lookup (and its dropout): x `[B, T, D]`."""
    h = model.position(x, training=True)
    y1, y2 = model.stack(h, h, rng=rng)
    return model.lm_head(model.final_norm(jnp.concatenate([y1, y2], -1)))


@pytest.fixture(scope="module")
def grads(model):
    """{reversible: jit(params, x, cotangent) -> (<logits, cotangent>, (d params, d x))}: the same
    parameters through the reversible stack and through plain autodiff, dropout on, fixed key."""
    graphdefs = {True: nnx.graphdef(model), False: nnx.graphdef(nnx.eval_shape(
        lambda: ReformerLM(_settings(reversible=False), rngs=nnx.Rngs(0))))}

    def make(graphdef):
        def objective(params, x, cotangent):
            logits = _logits_from_embeddings(nnx.merge(graphdef, params), x, jax.random.key(3))
            return jnp.sum(logits * cotangent)
        return jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))

    return {reversible: make(graphdef) for reversible, graphdef in graphdefs.items()}


def test_reversible_gradients_equal_plain_gradients_with_lsh_and_dropout(model, grads):
    ids = jax.random.randint(jax.random.key(1), (2, T), 0, 20)
    x = model.tokens(ids)
    cotangent = jax.random.normal(jax.random.key(2), (2, T, 20))
    params = nnx.state(model)
    value_rev, grads_rev = grads[True](params, x, cotangent)
    value_plain, grads_plain = grads[False](params, x, cotangent)
    np.testing.assert_allclose(value_rev, value_plain, rtol=1e-5)
    # The token table is not used from embeddings: its gradient is zero in both.
    assert not np.any(grads_rev[0]["tokens"]["embedding"][...])
    leaves_rev, leaves_plain = jax.tree.leaves(grads_rev), jax.tree.leaves(grads_plain)
    assert len(leaves_rev) == len(leaves_plain) > 0
    for g_rev, g_plain in zip(leaves_rev, leaves_plain):
        scale = float(np.max(np.abs(g_plain))) or 1.0
        np.testing.assert_allclose(g_rev, g_plain, rtol=0, atol=2e-5 * scale)
    assert sum(bool(np.any(g)) for g in leaves_plain) == len(leaves_plain) - 1


def test_lm_is_causal_by_gradients(model, grads):
    x = model.tokens(jax.random.randint(jax.random.key(4), (2, T), 0, 20))
    t = 19  # in the middle of a chunk, with earlier chunks and later ones
    at_t = jnp.zeros((2, T, 20)).at[:, t].set(1.0)
    _, (_, d_x) = grads[True](nnx.state(model), x, at_t)
    norms = np.abs(np.asarray(d_x)).sum(axis=(0, 2))
    assert np.all(norms[t + 1:] == 0.0), norms
    assert norms[t] > 0 and norms[:t].sum() > 0, norms


def _full_attention_oracle(branch: AttentionBranch, x: jax.Array) -> jax.Array:
    """Dense causal shared-QK attention with the self pair only when nothing else is visible."""
    h = branch.norm(x)
    qk, _, v = branch.attention.project(h, h)
    keys = qk * jax.lax.rsqrt(jnp.mean(qk**2, -1, keepdims=True) + 1e-6) / math.sqrt(qk.shape[-1])
    causal = dense.causal_pattern(T, T)
    not_self = ~jnp.eye(T, dtype=bool)
    mask = (causal & not_self) | (jnp.arange(T)[:, None] == 0) & (jnp.arange(T)[None] == 0)
    out = dense.attention(qk, keys, v, mask=mask[None, None], scale=1.0)
    return branch.attention.out(out.reshape(out.shape[:2] + (-1,)))


def test_full_attention_mode_equals_dense_shared_qk_attention():
    x = jax.random.normal(jax.random.key(6), (2, T, 32))
    no_dropout = dict(dropout_rate=0.0, attention_dropout=0.0)
    # Trained with LSH, evaluated with Full attention (eval_lsh_options).
    lsh_trained = AttentionBranch(_settings(eval_lsh_options=dict(FULL, n_buckets=None),
                                            **no_dropout), "lsh", rngs=nnx.Rngs(0))
    # Trained with Full attention (lsh_options), same parameters.
    full_trained = AttentionBranch(_settings(lsh_options=dict(FULL, n_buckets=4), **no_dropout),
                                   "lsh", rngs=nnx.Rngs(0))
    expected = np.asarray(_full_attention_oracle(lsh_trained, x))
    evaluate, train = nnx.jit(lambda b, x: b(x)), nnx.jit(lambda b, x: b(x, rng=jax.random.key(0)))
    np.testing.assert_allclose(evaluate(lsh_trained, x), expected, atol=2e-5)
    np.testing.assert_allclose(train(full_trained, x), expected, atol=2e-5)


def test_axial_length_rule_through_the_model(model):
    with pytest.raises(ValueError, match=r"axial_shape=\(4, 8\) covers 32 positions; training"):
        model(jnp.zeros((1, 24), jnp.int32), rng=jax.random.key(0))


@pytest.mark.parametrize("overrides, message", [
    (dict(attn_layers=("local", "nope")), "unknown attention mechanism 'nope'"),
    (dict(attn_layers=()), "model.attn_layers must be a non-empty tuple"),
    (dict(attn_layers="lsh"), "model.attn_layers must be a non-empty tuple"),
    (dict(num_heads=3), r"model.num_heads=3 must divide model.d_model=32"),
    (dict(eval_lsh_options=dict(n_rounds=4)), r"model.eval_lsh_options has keys \['n_rounds'\]"),
    (dict(ff_chunk_len=0), "model.ff_chunk_len must be >= 1 or None, got 0"),
    (dict(activation="swish"), "model.activation must be one of"),
    (dict(axial_dims=(8, 8)), r"axial_dims=\(8, 8\) must sum to d_model=32"),
])
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ReformerLM(_settings(**overrides), rngs=nnx.Rngs(0))


def test_configs_build_their_settings():
    for arg in (None, "smoke", "enwik8", "wide"):
        config = _load_config("reformer_lm", arg)
        settings = models.model_settings(config.model, vocab_size=256, num_classes=None,
                                         dtype=config.dtype)
        assert math.prod(settings.axial_shape) == config.data.seq_len
        assert sum(settings.axial_dims) == settings.d_model
        assert settings.lsh_options["chunk_len"] <= config.data.seq_len
    for arg in ("train=full", "train=lsh2,eval=lsh8", "cpu,train=lsh4,eval=full", "smoke"):
        config = _load_config("reformer_duplication", arg)
        settings = models.model_settings(config.model, vocab_size=128, num_classes=None,
                                         dtype=config.dtype)
        assert math.prod(settings.axial_shape) == config.data.seq_len


def test_duplication_rows_score_the_second_half():
    config = duplication.DuplicationConfig(name="test", length=8, num_symbols=3)
    tokens = np.stack([duplication.generate(random.Random(seed), config) for seed in (0, 1)])
    assert np.all(tokens[:, 0] == 0) and np.all(tokens[:, 4] == 0)
    np.testing.assert_array_equal(tokens[:, 1:4], tokens[:, 5:8])
    assert np.all((tokens[:, [1, 2, 3]] >= 1) & (tokens[:, [1, 2, 3]] <= 3))
    rows = duplication.lm_rows(tokens)
    np.testing.assert_array_equal(rows["inputs"][:, 1:], tokens[:, :-1])
    np.testing.assert_array_equal(rows["inputs"][:, 0], 0)
    np.testing.assert_array_equal(rows["targets"], tokens)
    np.testing.assert_array_equal(rows["weights"], [[0, 0, 0, 0, 1, 1, 1, 1]] * 2)


def test_duplication_builder_generates_the_task(data_dir: str):
    builder = duplication.Duplication(config="tiny", data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source("validation")
    assert len(source) == 64
    rows = duplication.Rows(source, 32).rows(np.array([0, 5, -1]))
    first = np.asarray(source[0]["tokens"])
    assert first.dtype == np.int32 and first.shape == (32,)
    np.testing.assert_array_equal(first[:16], first[16:])
    np.testing.assert_array_equal(rows["targets"][0], first)
    np.testing.assert_array_equal(rows["weights"].sum(1), [16, 16, 0])


def test_duplication_config_trains_and_evaluates_with_other_attention(tmp_path,
                                                                      data_dir: str):
    from attnx import data, train

    config = _load_config("reformer_duplication", "smoke,train=full")
    config.data.data_dir = data_dir
    dataset = data.build(config.data, seed=0)
    assert (dataset.info.kind, dataset.info.vocab_size, dataset.info.seq_len) == ("lm", 128, 32)
    batch = dataset.train_batch(0, global_batch_size=4)
    np.testing.assert_array_equal(batch["weights"].sum(1), [16] * 4)  # the second half only
    np.testing.assert_array_equal(batch["inputs"][:, 17:], batch["targets"][:, 16:-1])
    config.data.seq_len = 64
    with pytest.raises(ValueError, match="data.seq_len must equal"):
        data.build(config.data, seed=0)
    config.data.seq_len = 32

    workdir = str(tmp_path / "run")
    metrics = train.train_and_evaluate(config, workdir)
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
    # The same checkpoint evaluated with 2-round LSH (the Table 2 off-diagonal): its own numbers.
    lsh = _load_config("reformer_duplication", "smoke,train=full,eval=lsh2")
    lsh.data.data_dir = config.data.data_dir
    with_lsh = train.evaluate_checkpoint(lsh, workdir, "test")
    with_full = train.evaluate_checkpoint(config, workdir, "test")
    assert math.isfinite(with_lsh["loss"]) and with_lsh["loss"] != with_full["loss"]


def test_reformer_lm_smoke_run_end_to_end(tmp_path, data_dir: str):
    from attnx import train

    config = _load_config("reformer_lm", "smoke")
    config.data.data_dir = data_dir
    config.num_samples = 0  # one compile less; sampling is the trainer's, tested with it
    metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["loss"] < 0.8 * math.log(256), metrics  # learned beyond uniform bytes
    assert os.path.isdir(tmp_path / "run" / "tensorboard")


@pytest.fixture(scope="module")
def exact_decoder() -> ReformerLM:
    """Local and dense layers: incremental decoding is exact."""
    return ReformerLM(_settings(attn_layers=("local", "dense"), dropout_rate=0.0,
                                attention_dropout=0.0), rngs=nnx.Rngs(1))


def test_local_and_dense_decoding_equals_the_full_forward(exact_decoder):
    ids = jax.random.randint(jax.random.key(4), (2, 20), 0, 20)
    logits, caches = nnx.jit(lambda m, x: m.prefill(x, T))(exact_decoder, ids[:, :5])
    steps = [logits]
    decode = nnx.jit(lambda m, x, c: m.decode(x, c))
    for t in range(5, 20):  # across chunk boundaries of 8
        logits, caches = decode(exact_decoder, ids[:, t:t + 1], caches)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), exact_decoder(ids), atol=2e-5)


def test_sampling_decodes_incrementally_by_default(exact_decoder, model):
    """Greedy samples through the caches equal those of the windowed recomputation (exact for
    local + dense); the LSH model decodes through its caches too."""
    prompt = np.array([[3, 5, 7], [1, 2, 3]], np.int32)
    assert exact_decoder.supports_decoding and model.supports_decoding
    cached = decoding.generate_lm(exact_decoder, prompt, 9, window=T, temperature=0.0)
    windowed = decoding.generate_lm(exact_decoder, prompt, 9, window=T, temperature=0.0,
                                    use_cache=False)
    np.testing.assert_array_equal(cached, windowed)
    assert cached.shape == (2, 12)
    sampled = decoding.generate_lm(model, prompt, 4, window=T, top_k=5)
    assert sampled.shape == (2, 7) and (sampled[:, :3] == prompt).all()
    with pytest.raises(ValueError, match="num_tokens"):
        decoding.generate_lm(model, prompt, T, window=T)


def test_lsh_prefill_equals_the_full_forward_and_attention_maps_follow_the_pattern(model):
    ids = jax.random.randint(jax.random.key(5), (2, 16), 0, 20)
    logits, _ = nnx.jit(lambda m, x: m.prefill(x, T))(model, ids)
    np.testing.assert_allclose(logits, nnx.jit(lambda m, x: m(x))(model, ids), atol=2e-5)
    maps = nnx.jit(lambda m, x: m.attention_maps(x))(model, jnp.tile(ids[:1], (1, 2)))
    assert [m.shape for m in maps] == [(1, 2, T, T)] * 2
    for weights in maps:
        weights = np.asarray(weights)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert (np.triu(weights[0, 0], 1) == 0).all()  # causal
    local_band = np.asarray(maps[0])[0, 0]  # chunks of 8, each seeing the one before
    assert (local_band[31, :16] == 0).all() and (local_band[31, 16:] > 0).all()
    assert (np.asarray(maps[1])[0, 0, 31] > 0).sum() < T  # LSH: a few sorted chunks
