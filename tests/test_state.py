"""Model state that is not nnx.Param (BatchNorm statistics) through the train and eval steps."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import orbax.checkpoint as ocp

from attnx import config_lib, data, optim, tasks, train
from attnx import state as state_lib

IMAGE_SHAPE = (8, 8, 1)


def _config() -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.model = ml_collections.ConfigDict(dict(name="cnn_classifier", channels=(4, 8)))
    config.data = ml_collections.ConfigDict(dict(name="synthetic", seq_len=1))
    config.optimizer.update(warmup_steps=0, schedule="constant", learning_rate=0.1)
    config.batch_size = 8
    return config


class _Info:
    """The DataInfo fields the state reads, for synthetic image batches."""

    kind = "image_classification"
    vocab_size = None
    num_classes = 3
    image_shape = IMAGE_SHAPE
    clip_shape = None
    features = dict.fromkeys(("image", "label", "weights"))


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Pixel values far from zero mean / unit variance, so that batch statistics are not trivial.
    image = 3.0 + 2.0 * rng.random((8,) + IMAGE_SHAPE, np.float32)
    return {"image": image, "label": rng.integers(0, 3, 8).astype(np.int32),
            "weights": np.ones(8, np.float32)}


@pytest.fixture(scope="module")
def setup():
    config = _config()
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state = state_lib.init(config, _Info, tx)
    task = tasks.get("image_classification")
    step = train.make_train_step(graphdef, task, tx, schedule)
    return graphdef, state, task, step


def _stats(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state["model_state"])]


def test_model_state_holds_the_batch_statistics(setup):
    _, state, _, _ = setup
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(state["model_state"])]
    assert len(paths) == 4 and all("mean" in p or "var" in p for p in paths), paths
    assert not any("mean" in jax.tree_util.keystr(p) or "var" in jax.tree_util.keystr(p)
                   for p, _ in jax.tree_util.tree_leaves_with_path(state["params"]))


def test_batch_statistics_over_four_devices_equal_one_device(setup):
    """Training updates the running averages from the global batch, however it is sharded."""
    assert jax.device_count() == 4
    _, state, _, step_fn = setup
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train.data_mesh(devices)
        step = jax.jit(step_fn, in_shardings=(NamedSharding(mesh, P()),
                                              NamedSharding(mesh, P("data")),
                                              NamedSharding(mesh, P())))
        new = state
        for i in range(2):
            new, _ = step(new, _batch(i), jax.random.key(0))
        results.append(jax.device_get(new))
    one, four = results
    for initial, x1, x4 in zip(_stats(state), _stats(one), _stats(four)):
        assert not np.allclose(initial, x1)  # trained statistics moved from their initial values
        np.testing.assert_allclose(x1, x4, rtol=1e-5, atol=1e-6)


def test_one_step_updates_the_running_averages_by_hand(setup):
    """After one step from zero mean / unit variance, with momentum 0.9: mean = 0.1 * the batch's
    channel means of the first convolution's output, var = 0.9 + 0.1 * their (biased) variance."""
    graphdef, state, _, step_fn = setup
    new, _ = jax.jit(step_fn)(state, _batch(0), jax.random.key(0))
    conv_out = np.asarray(state_lib.merge(graphdef, state).convs[0](_batch(0)["image"]))
    norm = new["model_state"]["norms"][0]
    np.testing.assert_allclose(norm["mean"][...], 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(norm["var"][...], 0.9 + 0.1 * conv_out.var((0, 1, 2)), rtol=1e-4)


def test_eval_reads_but_never_changes_the_statistics(setup):
    graphdef, state, task, step_fn = setup
    state, _ = jax.jit(step_fn)(state, _batch(0), jax.random.key(0))
    eval_state = state_lib.eval_state(state)
    before = _stats(state)
    eval_step = jax.jit(train.make_eval_step(graphdef, task))
    loss_sum = float(eval_step(eval_state, _batch(1))[0])
    for a, b in zip(_stats(eval_state), before):
        np.testing.assert_array_equal(a, b)
    # Evaluation normalises with the running averages: other averages give another loss ...
    shifted = {"params": eval_state["params"],
               "model_state": jax.tree.map(lambda x: x + 1.0, eval_state["model_state"])}
    assert not np.isclose(loss_sum, float(eval_step(shifted, _batch(1))[0]))
    # ... while a training forward uses the batch's own statistics and ignores them.
    image, key = _batch(1)["image"], jax.random.key(0)
    np.testing.assert_allclose(state_lib.merge(graphdef, eval_state)(image, rng=key),
                               state_lib.merge(graphdef, shifted)(image, rng=key), rtol=1e-5)


def test_a_config_with_the_wrong_kind_of_data_is_refused():
    config = _config()

    class TokenInfo(_Info):
        kind = "classification"

    with pytest.raises(ValueError, match="reads 'image_classification' data.*serves "
                                         "'classification' batches"):
        state_lib.check_data(config, TokenInfo)

    class NoLabel(_Info):
        features = dict.fromkeys(("image", "weights"))

    with pytest.raises(ValueError, match=r"has no \['label'\]"):
        state_lib.check_data(config, NoLabel)


def _image_run_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """The CNN on Pathfinder's tiny split as [32, 32, 1] images, a few steps."""
    config = _config()
    config.data = data.default_data_config(
        name="pathfinder", builder_config="tiny", representation="image", data_dir=data_dir)
    config.model.channels = (4,)
    config.update(num_train_steps=6, log_every=3, eval_every=100, checkpoint_every=100,
                  eval_batches=1, num_samples=0, batch_size=8)
    config.update(overrides)
    return config


def _final_state(workdir: str, step: int) -> dict:
    with ocp.CheckpointManager(f"{workdir}/checkpoints") as manager:
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]


def test_image_run_resumes_bit_for_bit_and_evaluations_leave_the_statistics(data_dir, tmp_path):
    """The whole train state, BatchNorm statistics included, survives a stop and resume exactly;
    a run that also evaluates every 2 steps ends with the very same state."""
    config = _image_run_config(data_dir)
    metrics = train.train_and_evaluate(config, str(tmp_path / "straight"))
    assert {"loss", "accuracy"} <= set(metrics) and "bits_per_byte" not in metrics
    stopped = _image_run_config(data_dir, num_train_steps=3)
    train.train_and_evaluate(stopped, str(tmp_path / "resumed"))
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    evaluating = _image_run_config(data_dir, eval_every=2)
    train.train_and_evaluate(evaluating, str(tmp_path / "evaluating"))
    straight = _final_state(str(tmp_path / "straight"), 6)
    assert jax.tree.leaves(straight["model_state"])
    for other in ("resumed", "evaluating"):
        state = _final_state(str(tmp_path / other), 6)
        for key in ("params", "model_state", "opt_state"):
            for a, b in zip(jax.tree.leaves(straight[key]), jax.tree.leaves(state[key])):
                np.testing.assert_array_equal(a, b)
    # --mode=eval restores the statistics with the params: evaluating the best checkpoint
    # reproduces the run's own last evaluation.
    again = train.evaluate_checkpoint(config, str(tmp_path / "straight"), "validation")
    np.testing.assert_allclose(again["loss"], metrics["loss"], rtol=1e-6)
