"""Long Range Arena: configs for every mechanism, the LSTM baseline, the Longformer models.

Every `lra_listops` / `lra_pathfinder` variant (each mechanism and `model=lstm`, at the default,
`smoke` and `lra` sizes) builds; every variant learns a ListOps batch and Longformer takes a step
on Pathfinder pixels (compiles cost seconds each on CPU, so each model compiles once); the LSTM is
checked against a plain loop over each row's real tokens; text and image configs run on
`tfds.testing.mock_data`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from attnx import config_lib, data, optim, tasks, train
from attnx import state as state_lib
from attnx.models import longformer, lstm
from helpers import fast_jit, load_config, train_setup

MECHANISMS = ("dense", "flash", "local", "lsh", "longformer")
VARIANTS = tuple(f"attention={m}" for m in MECHANISMS) + ("model=lstm",)


@pytest.fixture(scope="module")
def infos(data_dir: str) -> dict[str, data.DataInfo]:
    """The smoke datasets of both tasks, prepared once: {config name: DataInfo}."""
    out = {}
    for name in ("lra_listops", "lra_pathfinder"):
        config = load_config(name, "smoke")
        config.data.data_dir = data_dir
        out[name] = data.build(config.data, seed=0).info
    return out


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["lra_listops", "lra_pathfinder"])
def test_every_variant_builds(name: str, infos):
    info = infos[name]
    for variant in VARIANTS:
        for size in ("", ",smoke", ",lra"):
            config = load_config(name, variant + size)
            train.validate(config)
            tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
            _, state_shape = state_lib.abstract_state(config, info, tx)
            assert jax.tree.leaves(state_shape["params"])
            seq_len = config.data.seq_len
            if variant == "model=lstm":
                assert config.model.name == "lstm_classifier"
                continue
            mechanism = variant.split("=")[1]
            expected = "longformer_classifier" if mechanism == "longformer" else (
                "transformer_classifier")
            assert (config.model.name, config.model.attention) == (expected, mechanism)
            assert config.model.attention_options.to_dict() == config_lib.attention_options(
                mechanism, seq_len + 1).to_dict()
            assert config.model.max_len == seq_len + 1


def test_attention_option_defaults():
    assert config_lib.attention_options("dense", 513).to_dict() == {}
    assert config_lib.attention_options("local", 513).to_dict() == dict(
        chunk_len=64, chunks_before=1, chunks_after=1)
    assert config_lib.attention_options("local", 513, causal=True).chunks_after == 0
    lsh = config_lib.attention_options("lsh", 513)
    assert (lsh.n_hashes, lsh.chunk_len, lsh.n_buckets) == (2, 64, 18)  # 2 * ceil(513 / 64)
    assert config_lib.attention_options("lsh", 64).n_buckets == 2
    assert config_lib.attention_options("longformer", 1025).to_dict() == dict(
        window=64, max_global=1)
    with pytest.raises(ValueError, match="unknown attention mechanism 'sparse'"):
        config_lib.attention_options("sparse", 64)
    with pytest.raises(ValueError, match="model must be 'transformer' or 'lstm'"):
        config_lib.lra_classifier("gru", "dense", 64)
    with pytest.raises(ValueError, match="size must be 32, 64 or 128"):
        load_config("lra_pathfinder", "size=48")
    config = load_config("lra_pathfinder", "size=128,difficulty=easy,lra")
    assert (config.data.builder_config, config.data.seq_len) == ("128_easy", 128 * 128)


# ----------------------------------------------------------------------------- training


def _compiled_train_step(name: str, arg: str, data_dir: str, **optimizer):
    """(compiled train step, initial state, first train batch) of `configs/<name>.py:<arg>`."""
    config = load_config(name, arg)
    config.data.data_dir = data_dir
    config.optimizer.update(optimizer)
    dataset = data.build(config.data, seed=0)
    graphdef, task, tx, schedule, state = train_setup(config, dataset.info)
    batch = dataset.train_batch(0, global_batch_size=config.batch_size)
    step = fast_jit(train.make_train_step(graphdef, task, tx, schedule), state, batch,
                    jax.random.key(0))
    return step, state, batch


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_mechanism_learns_a_listops_batch(variant: str, data_dir: str, infos):
    """Eight train steps on one batch of eight expressions: the loss falls by a fifth."""
    step, state, batch = _compiled_train_step(
        "lra_listops", variant + ",smoke", data_dir, learning_rate=1e-2, warmup_steps=0,
        schedule="constant")
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0], losses


def test_longformer_classifies_pathfinder_pixels(data_dir: str, infos):
    """The forward pass of the Longformer classifier on 1,024-pixel images (global [CLS])."""
    config = load_config("lra_pathfinder", "attention=longformer,smoke")
    config.data.data_dir = data_dir
    dataset = data.build(config.data, seed=0)
    graphdef, task, _, _, state = train_setup(config, dataset.info)
    params = state_lib.eval_state(state)
    batch = next(dataset.eval_batches("validation", global_batch_size=8))
    assert batch["inputs"].shape == (8, 1024) and batch["mask"].all()
    eval_step = fast_jit(train.make_eval_step(graphdef, task), params, batch)
    loss_sum, correct, weight = eval_step(params, batch)
    assert np.isfinite(float(loss_sum)) and 0 <= float(correct) <= float(weight) == 8


# ----------------------------------------------------------------------------- LSTM


def _lstm(pool: str) -> lstm.LSTMClassifier:
    cfg = lstm.LSTMConfig(vocab_size=11, d_model=8, hidden_size=6, num_layers=2, pool=pool,
                          num_classes=3)
    return lstm.LSTMClassifier(cfg, rngs=nnx.Rngs(params=0))


def _reference_logits(model: lstm.LSTMClassifier, ids: np.ndarray, lengths: list[int]):
    """The classifier written as a Python loop over each row's real tokens only."""
    out = []
    for row, n in enumerate(lengths):
        x = model.embed.embedding[...][ids[row, :n]]  # [n, D]
        finals = []
        for directions in model.layers:
            outputs = []
            finals = []
            for layer in directions:
                h = jnp.zeros(layer.hidden_size)
                c = jnp.zeros(layer.hidden_size)
                seq = []
                order = range(n - 1, -1, -1) if layer.reverse else range(n)
                for t in order:
                    z = (x[t] @ layer.input.kernel[...] + layer.input.bias[...]
                         + h @ layer.recurrent.kernel[...])
                    i, f, g, o = jnp.split(z, 4)
                    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                    h = jax.nn.sigmoid(o) * jnp.tanh(c)
                    seq.append(h)
                outputs.append(jnp.stack(seq[::-1] if layer.reverse else seq))
                finals.append(h)
            x = jnp.concatenate(outputs, axis=-1)
        pooled = jnp.concatenate(finals) if model.cfg.pool == "last" else x.mean(0)
        out.append(pooled @ model.head.kernel[...] + model.head.bias[...])
    return jnp.stack(out)


def test_lstm_equals_a_loop_over_real_tokens():
    """Logits and parameter gradients (random cotangent) of the masked scan equal a reference
    that runs the recurrence over each row's real tokens only."""
    lengths = [4, 2]
    rng = np.random.default_rng(0)
    mask = np.arange(6)[None] < np.array(lengths)[:, None]
    ids = np.where(mask, rng.integers(1, 11, (2, 6)), 0).astype(np.int32)
    cotangent = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    graphdef, params = nnx.split(_lstm("last"), nnx.Param)

    def with_vjp(p, fn):
        logits, vjp = jax.vjp(lambda q: fn(nnx.merge(graphdef, q)), p)
        return logits, vjp(cotangent)

    def ours(p):
        return with_vjp(p, lambda m: m(jnp.asarray(ids), jnp.asarray(mask)))

    def reference(p):
        return with_vjp(p, lambda m: _reference_logits(m, ids, lengths))

    logits, grads = fast_jit(ours, params)(params)
    expected, expected_grads = fast_jit(reference, params)(params)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_lstm_ignores_padding_and_sees_every_real_token():
    """Mean pooling (the 'last' pooling is checked against the loop above): padding ids and the
    amount of padding change nothing; every real token changes its row only."""
    graphdef, params = nnx.split(_lstm("mean"), nnx.Param)

    def forward(ids, mask):
        return nnx.merge(graphdef, params)(ids, mask)

    rng = np.random.default_rng(1)
    lengths = np.array([12, 7, 3, 1])
    mask = np.arange(16)[None] < lengths[:, None]
    ids = np.where(mask, rng.integers(1, 11, (4, 16)), 0).astype(np.int32)
    short = fast_jit(forward, ids, mask)
    base = np.asarray(short(ids, mask))
    garbage = np.where(mask, ids, rng.integers(1, 11, (4, 16))).astype(np.int32)
    np.testing.assert_array_equal(short(garbage, mask), base)
    longer_ids, longer_mask = np.pad(ids, ((0, 0), (0, 8))), np.pad(mask, ((0, 0), (0, 8)))
    longer = fast_jit(forward, longer_ids, longer_mask)(longer_ids, longer_mask)
    np.testing.assert_allclose(longer, base, rtol=1e-6, atol=1e-6)
    for position in (0, 6):  # The first and the last real token of row 1 both matter.
        changed = ids.copy()
        changed[1, position] = changed[1, position] % 10 + 1
        out = np.asarray(short(changed, mask))
        assert not np.allclose(out[1], base[1])
        np.testing.assert_array_equal(np.delete(out, 1, 0), np.delete(base, 1, 0))
    with pytest.raises(ValueError, match="model.pool"):
        lstm.LSTMConfig(vocab_size=4, pool="max")
    with pytest.raises(ValueError, match="model.hidden_size"):
        lstm.LSTMConfig(vocab_size=4, hidden_size=0)


# ----------------------------------------------------------------------------- Longformer


def test_longformer_config_defaults_and_errors():
    cfg = longformer.LongformerConfig(vocab_size=10, num_classes=2)
    assert cfg.attention_options == {"window": 64, "max_global": 1}
    cfg = longformer.LongformerConfig(vocab_size=10, attention_options={"window": 8})
    assert cfg.attention_options == {"window": 8, "max_global": 1}
    with pytest.raises(ValueError, match="attention='longformer'"):
        longformer.LongformerConfig(vocab_size=10, attention="dense")
    with pytest.raises(ValueError, match="max_global must be >= 1"):
        longformer.LongformerConfig(vocab_size=10, attention_options={"max_global": 0})


def test_longformer_mlm_is_local_without_globals_and_global_with_them():
    cfg = longformer.LongformerConfig(
        vocab_size=12, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_len=64,
        attention_options={"window": 2, "max_global": 1})
    model = longformer.LongformerMLM(cfg, rngs=nnx.Rngs(params=0))
    ids = jnp.asarray(np.random.default_rng(2).integers(1, 12, (2, 24)), jnp.int32)
    mask = jnp.ones((2, 24), bool)
    assert model(ids, mask).shape == (2, 24, 12)

    def reach(global_mask):  # |d logits[:, 12] / d embeddings[:, j]| for each j
        def from_embeddings(x):
            h = model.embed.position(x * model.embed.scale)
            h = model.encoder(h, mask=mask, global_mask=global_mask)
            return model.transform_norm(jax.nn.gelu(model.transform(h)))[:, 12].sum()
        return jnp.abs(jax.grad(from_embeddings)(model.embed.tokens(ids))).sum(axis=(0, 2))

    # Two layers of window 2 reach positions 8..16 only; through a global token 0, everything.
    none = jnp.zeros((2, 24), bool)
    reach = fast_jit(reach, none)
    local = np.asarray(reach(none))
    assert (local[8:17] > 0).all() and not local[:8].any() and not local[17:].any()
    assert (np.asarray(reach(none.at[:, 0].set(True))) > 0).all()


def test_mask_tokens_corrupts_only_chosen_real_tokens():
    ids = jnp.asarray(np.random.default_rng(3).integers(1, 50, (64, 256)), jnp.int32)
    mask = jnp.arange(256)[None] < 200
    inputs, targets, weights = longformer.mask_tokens(ids, mask, jax.random.key(0), mask_id=0,
                                                      vocab_size=50, rate=0.5)
    chosen = np.asarray(weights) > 0
    assert (np.asarray(targets) == np.asarray(ids)).all()
    assert not chosen[:, 200:].any() and abs(chosen[:, :200].mean() - 0.5) < 0.02
    changed = np.asarray(inputs) != np.asarray(ids)
    assert not changed[~chosen].any()
    assert abs((np.asarray(inputs)[chosen] == 0).mean() - 0.8) < 0.02
    with pytest.raises(ValueError, match="rate"):
        longformer.mask_tokens(ids, mask, jax.random.key(0), mask_id=0, vocab_size=50, rate=1.0)


def test_longformer_mlm_config_trains_on_masked_bytes_only(tmp_path, data_dir: str):
    config = load_config("longformer_mlm", "smoke")
    config.data.data_dir = data_dir
    config.num_train_steps = 40
    dataset = data.build(config.data, seed=0)
    model = state_lib.build_model(config, dataset.info)
    assert model.cfg.vocab_size == 257  # the 256 bytes and [MASK]
    batch = {k: jnp.asarray(v) for k, v in dataset.train_batch(0, global_batch_size=4).items()}
    logits, targets, weights = tasks.get("mlm").forward(model, batch, None)
    again = tasks.get("mlm").forward(model, batch, None)
    # Evaluation corrupts the same bytes every time; training draws its own.
    np.testing.assert_array_equal(weights, again[2])
    train_weights = tasks.get("mlm").forward(model, batch, jax.random.key(5))[2]
    assert not np.array_equal(weights, train_weights)
    np.testing.assert_array_equal(targets, batch["targets"])
    assert logits.shape == batch["targets"].shape + (257,)
    assert 0.05 < float(weights.mean()) < 0.3  # ~15% of the bytes are scored

    metrics = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert metrics["loss"] < 0.9 * math.log(257), metrics  # better than uniform over bytes
    assert "bits_per_byte" not in metrics  # per masked byte, not a compression rate
    result = subprocess.run([sys.executable, "-m", "attnx.sample", f"--workdir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0
    assert "sampling needs an LM or seq2seq run" in result.stderr and "'mlm'" in result.stderr


# ----------------------------------------------------------------------------- text, image


@pytest.mark.parametrize("name,num_classes,seq_len", [("lra_text", 2, 128),
                                                      ("lra_image", 10, 1024)])
def test_text_and_image_configs_flow_through_mock_data(name: str, num_classes: int,
                                                       seq_len: int):
    config = load_config(name, "attention=local,smoke")
    assert (config.data.train_split, config.data.eval_split) == ("train[:90%]", "train[90%:]")
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        dataset = data.build(config.data, seed=0)
        batch = dataset.train_batch(0, global_batch_size=config.batch_size)
        test_rows = sum(b["weights"].sum() for b in dataset.eval_batches(
            config.data.test_split, global_batch_size=config.batch_size))
    info = dataset.info
    assert (info.vocab_size, info.num_classes, info.seq_len) == (257, num_classes, seq_len)
    assert batch["inputs"].shape == (config.batch_size, seq_len) and test_rows == 16
    graphdef, task, _, _, state = train_setup(config, info)
    eval_step = jax.jit(train.make_eval_step(graphdef, task))
    loss_sum, correct, weight = eval_step(state_lib.eval_state(state), batch)
    assert np.isfinite(float(loss_sum)) and weight == config.batch_size
