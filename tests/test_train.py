"""The trainer end to end: smoke run, TensorBoard, checkpoints, resume, data parallelism, lowering."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnx import compat, data, decoding, optim, train
from attnx import state as state_lib
from helpers import load_config, train_setup


def tiny_lm_config(data_dir, **overrides):
    config = load_config("transformer_lm", "smoke")
    config.data.data_dir = data_dir
    config.data.seq_len = 32
    config.model.update(d_model=32, num_heads=2, num_layers=1, d_ff=64, max_len=32)
    config.update(num_train_steps=12, log_every=4, eval_every=6, checkpoint_every=6,
                  eval_batches=1, num_samples=0)
    config.update(overrides)
    return config


def _read_params(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]


def test_smoke_run_logs_checkpoints_and_resumes(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = tiny_lm_config(data_dir, num_samples=1, sample_len=4, sample_prompt_len=4,
                            attention_maps=True)
    metrics = train.train_and_evaluate(config, workdir)
    assert {"loss", "accuracy", "bits_per_byte"} <= set(metrics)
    assert np.isclose(metrics["bits_per_byte"], metrics["loss"] / np.log(2))
    out = capsys.readouterr().out
    assert "step 12/12 | loss" in out and "tokens/s" in out and "ETA" in out
    best_step = max(int(s) for s in os.listdir(os.path.join(workdir, "best")))
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("done: 12 steps (12 in this run, ") and "final eval: loss " in summary
    assert summary.endswith(f"best checkpoint: step {best_step} "
                            f"({os.path.join(workdir, 'best', str(best_step))})")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "6"]
    assert os.listdir(os.path.join(workdir, "best"))

    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/tokens_per_second", "train/learning_rate", "eval/loss",
            "eval/bits_per_byte"} <= set(tags)
    losses = [e.value for e in events.Scalars("train/loss")]
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12]
    assert all(np.isfinite(losses))
    assert "samples/0" in " ".join(events.Tags()["tensors"])
    assert "attention/layer_0" in events.Tags()["images"]

    config.num_train_steps = 18
    train.train_and_evaluate(config, workdir)
    assert "Resuming from step 12 of" in capsys.readouterr().out
    assert "18" in os.listdir(os.path.join(workdir, "checkpoints"))

    again = train.train_and_evaluate(config, workdir)  # finished: evaluates, trains nothing
    out = capsys.readouterr().out
    assert "already trained for 18 steps" in out and "compiled the train step" not in out
    assert out.strip().splitlines()[-1].startswith("done: 18 steps (0 in this run, ")
    assert {"loss", "bits_per_byte"} <= set(again)


def test_stopped_and_resumed_equals_uninterrupted(data_dir, tmp_path):
    config = tiny_lm_config(data_dir, num_train_steps=12, eval_every=100, checkpoint_every=100)
    config.model.dropout_rate = 0.1  # randomness in the step must replay too
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    config.num_train_steps = 5
    train.train_and_evaluate(config, str(tmp_path / "stopped"))
    config.num_train_steps = 12
    train.train_and_evaluate(config, str(tmp_path / "stopped"))
    straight = _read_params(str(tmp_path / "straight"), 12)
    resumed = _read_params(str(tmp_path / "stopped"), 12)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_interrupt_keeps_last_complete_checkpoint(data_dir, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = tiny_lm_config(data_dir, num_train_steps=12, eval_every=100, checkpoint_every=4)
    real_build = data.build

    def build_that_interrupts(*args, **kwargs):
        dataset = real_build(*args, **kwargs)
        real_batch = dataset.train_batch

        def train_batch(position, **kw):
            if position == 9:
                raise KeyboardInterrupt
            return real_batch(position, **kw)

        dataset.train_batch = train_batch
        return dataset

    monkeypatch.setattr(train.data, "build", build_that_interrupts)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))
    monkeypatch.setattr(train.data, "build", real_build)
    train.train_and_evaluate(config, workdir)
    assert "12" in os.listdir(os.path.join(workdir, "checkpoints"))


def test_params_ema_by_hand():
    """ema_2 = d^2 p0 + d (1 - d) p1 + (1 - d) p2 for parameters p0 -> p1 -> p2 of plain SGD."""
    tx = optax.chain(optax.sgd(0.1), optim.params_ema(0.9))
    params = {"w": jnp.array([1.0, -2.0])}
    state, history = tx.init(params), [params["w"]]
    for grad in ([1.0, 1.0], [-2.0, 4.0]):
        updates, state = tx.update({"w": jnp.array(grad)}, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params["w"])
    p0, p1, p2 = history
    np.testing.assert_allclose(optim.ema_params(state)["w"],
                               0.81 * p0 + 0.09 * p1 + 0.1 * p2, rtol=1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        optim.params_ema(1.0)


def test_evaluation_and_best_checkpoint_read_the_ema(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_lm_config(data_dir, num_train_steps=6, eval_every=6, checkpoint_every=6)
    config.optimizer.ema_decay = 0.5
    final = train.train_and_evaluate(config, workdir)
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        latest = manager.restore(6, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]
    with ocp.CheckpointManager(os.path.join(workdir, "best")) as manager:
        best = manager.restore(6, args=ocp.args.Composite(
            model=ocp.args.StandardRestore()))["model"]
    ema = latest["opt_state"][-1]["ema"]  # (chain's state, ParamsEma), restored untyped
    for got, want in zip(jax.tree.leaves(best["params"]), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(w, r) for w, r in zip(jax.tree.leaves(ema),
                                                         jax.tree.leaves(latest["params"])))
    metrics = train.evaluate_checkpoint(config, workdir, "validation")
    assert np.isclose(metrics["loss"], final["loss"], rtol=1e-5)


def test_eval_mode_uses_best_checkpoint(data_dir, tmp_path):
    """--mode=eval restores the checkpoint of the best validation loss: its step, and its
    validation metrics equal those logged at that step."""
    workdir = str(tmp_path / "run")
    config = tiny_lm_config(data_dir, num_train_steps=12, eval_every=4, checkpoint_every=12)
    # A learning rate that first helps, then diverges: the best evaluation is not the last.
    config.optimizer.update(learning_rate=0.05, warmup_steps=0, schedule="constant",
                            clip_norm=None)
    train.train_and_evaluate(config, workdir)
    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("eval/loss")}
    best_step = min(logged, key=logged.get)
    assert sorted(logged) == [4, 8, 12] and best_step != 12, logged
    metrics = train.evaluate_checkpoint(config, workdir, "validation")
    with open(os.path.join(workdir, "eval_validation.json")) as f:
        record = json.load(f)
    assert (record["checkpoint"], record["step"]) == ("best", best_step)
    assert np.isclose(metrics["loss"], logged[best_step], rtol=1e-5)
    with pytest.raises(ValueError, match="no checkpoint"):
        train.evaluate_checkpoint(config, str(tmp_path / "empty"), "test")


def test_bad_config_fails_before_training(data_dir, tmp_path):
    config = tiny_lm_config(data_dir)
    config.data.seq_len = 64
    with pytest.raises(ValueError, match="data.seq_len=64 .* exceeds model.max_len=32"):
        train.train_and_evaluate(config, str(tmp_path / "a"))
    config = tiny_lm_config(data_dir, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6 must be divisible"):
        train.train_and_evaluate(config, str(tmp_path / "b"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be written"):
        train.train_and_evaluate(tiny_lm_config(data_dir), str(blocker / "run"))


def _step_setup(config, devices):
    dataset = data.build(config.data, seed=0)
    graphdef, task, tx, schedule, state = train_setup(config, dataset.info)
    mesh = train.data_mesh(devices)
    step = jax.jit(train.make_train_step(graphdef, task, tx, schedule),
                   in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data")),
                                 NamedSharding(mesh, P())))
    batch = dataset.train_batch(0, global_batch_size=config.batch_size)
    return step, state, batch


def test_four_devices_equal_one_device(data_dir):
    assert jax.device_count() == 4, "tests/conftest.py sets four CPU devices"
    config = tiny_lm_config(data_dir)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        step, state, batch = _step_setup(config, devices)
        new_state, metrics = step(state, batch, jax.random.key(0))
        results.append((jax.device_get(new_state["params"]), float(metrics["loss"])))
    (p1, l1), (p4, l4) = results
    assert np.isclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch(data_dir):
    config = tiny_lm_config(data_dir)
    step, state, batch = _step_setup(config, jax.devices()[:1])
    graphdef, task, tx, schedule, _ = train_setup(config, data.build(config.data, seed=0).info)
    accum = jax.jit(train.make_train_step(graphdef, task, tx, schedule, grad_accum_steps=2))
    one, m1 = step(state, batch, jax.random.key(0))
    two, m2 = accum(state, batch, jax.random.key(0))
    assert np.isclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _lowered_texts(config, data_dir, platforms):
    """StableHLO text of `config`'s train step lowered for each of `platforms`, nothing run."""
    config.data.data_dir = data_dir
    dataset = data.build(config.data, seed=0)
    task = state_lib.check_data(config, dataset.info)
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state_shape = state_lib.abstract_state(config, dataset.info, tx)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                         dataset.train_batch(0, global_batch_size=config.batch_size))
    step = jax.jit(train.make_train_step(graphdef, task, tx, schedule))
    return {p: compat.lower_for(step, p, state_shape, batch, jax.random.key(0)).as_text()
            for p in platforms}


@pytest.mark.parametrize("name,arg", [("transformer_lm", "smoke"), ("lra_listops", "smoke"),
                                      ("transformer_seq2seq", "smoke")])
def test_train_step_lowers_for_gpu_and_tpu(data_dir, name, arg):
    texts = _lowered_texts(load_config(name, arg), data_dir, ("cuda", "tpu"))
    for text in texts.values():
        assert "func.func public @main" in text and "stablehlo.dot_general" in text


def test_flash_train_step_lowers_its_kernel_for_gpu_only(data_dir):
    """With the Pallas kernel, the CUDA lowering of the train step holds Triton kernel calls
    (forward and both backward kernels) that the CPU lowering of the same step cannot hold."""
    config = tiny_lm_config(data_dir)
    config.model.update(attention="flash", attention_options=dict(
        implementation="pallas", interpret=False, block_q=16, block_k=16))
    cuda = _lowered_texts(config, data_dir, ("cuda",))["cuda"]
    assert cuda.count("__gpu$xla.gpu.triton") >= 3
    config.model.attention_options.implementation = "xla"
    cpu = _lowered_texts(config, data_dir, ("cpu",))["cpu"]
    assert "triton" not in cpu and "stablehlo.dot_general" in cpu


def test_greedy_generation_with_cache_equals_window_recompute():
    from attnx import config_lib, models

    cfg = config_lib.transformer_model("transformer_lm", d_model=32, num_heads=2, num_layers=1,
                                       d_ff=64, max_len=32)
    lm = models.build(cfg, vocab_size=50)
    prompt = np.array([[3, 4, 5], [7, 8, 9]], np.int32)
    cached = decoding.generate_lm(lm, prompt, 6, window=32, temperature=0.0)
    windowed = decoding.generate_lm(lm, prompt, 6, window=32, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(cached, windowed)
    assert cached.shape == (2, 9)


def test_progress_counts_examples_for_images(capsys):
    class Writer:
        def scalars(self, step, metrics, prefix):
            self.logged = {prefix + k for k in metrics}

    info = data.DataInfo(kind="image_classification", num_classes=2,
                         features=data.representations.image_features((4, 4, 1)))
    config = load_config("maxvit_pathfinder", "smoke")
    writer = Writer()
    progress = train.Progress(config, info, writer)
    progress.steps = 2
    progress.report(2, {"loss": np.float32(0.5)})
    assert " examples/s | " in capsys.readouterr().out
    assert "train/examples_per_second" in writer.logged
