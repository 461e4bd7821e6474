"""Smoke runs of the MaxViT and ViT configs, and the image task's mixup.

`maxvit_pathfinder:smoke` and `vit_pathfinder:smoke` train a few steps end to end on the `tiny`
Pathfinder images through `train_and_evaluate`; the MaxViT run also checks that training moved
the BatchNorm statistics (read back from the final checkpoint) and that evaluation uses them
without changing them. `maxvit_imagenet:smoke` runs its recipe's train step (mixup, label
smoothing) for two steps (compiling a second whole run would double this file's time). The
full configs (CPU default, `variant=T|S|B`, ImageNet) are built abstractly: their model fits the
data and their settings are the documented ones.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from attnx import data, models, optim, tasks, train
from attnx import state as state_lib
from attnx.data.representations import image_features
from attnx.models import maxvit
from helpers import fast_jit, load_config, train_setup


def _run(config, data_dir, workdir):
    config.data.data_dir = data_dir
    config.update(checkpoint_every=config.num_train_steps, eval_every=config.num_train_steps)
    return train.train_and_evaluate(config, str(workdir))


def _variances(state) -> list[np.ndarray]:
    """The BatchNorm running variances of a train state (the means of BatchNorms after a
    bias-free convolution of normalised inputs stay near 0 by construction)."""
    return [np.asarray(x) for path, x in
            jax.tree_util.tree_leaves_with_path(state["model_state"])
            if "var" in jax.tree_util.keystr(path)]


def _checkpointed_state(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))
    return restored["state"]


def test_maxvit_smoke_run_trains_the_batch_statistics(data_dir, tmp_path):
    config = load_config("maxvit_pathfinder", "smoke")
    metrics = _run(config, data_dir, tmp_path)
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1
    dataset = data.build(config.data, seed=config.seed)
    graphdef, task, _, _, initial = train_setup(config, dataset.info)
    trained = _checkpointed_state(tmp_path, config.num_train_steps)
    before, after = _variances(initial), _variances(trained)
    assert len(before) == len(after) > 0
    assert all(not np.allclose(a, b) for a, b in zip(before, after))  # training moved them
    # Evaluation normalises with them and leaves them as they are.
    batch = next(iter(dataset.eval_batches("validation", global_batch_size=8, max_batches=1)))
    eval_state = {"params": trained["params"], "model_state": trained["model_state"]}
    eval_step = fast_jit(train.make_eval_step(graphdef, task), eval_state, batch)
    loss = float(eval_step(eval_state, batch)[0])
    for a, b in zip(jax.tree.leaves(eval_state["model_state"]),
                    jax.tree.leaves(trained["model_state"])):
        np.testing.assert_array_equal(a, b)
    shifted = dict(eval_state, model_state=jax.tree.map(lambda x: x + 1.0,
                                                        trained["model_state"]))
    assert not np.isclose(loss, float(eval_step(shifted, batch)[0]))


def test_imagenet_recipe_smoke_steps(data_dir):
    """`maxvit_imagenet:smoke`: the recipe's train step (mixup 0.8, label smoothing 0.1,
    stochastic depth) for 2 steps on tiny images: finite, learning, statistics moving."""
    config = load_config("maxvit_imagenet", "smoke")
    config.data.data_dir = data_dir
    dataset = data.build(config.data, seed=config.seed)
    graphdef, task, tx, schedule, state = train_setup(config, dataset.info)
    step = train.make_train_step(graphdef, task, tx, schedule,
                                 label_smoothing=config.label_smoothing)
    batch = dataset.train_batch(0, global_batch_size=config.batch_size)
    compiled = fast_jit(step, state, batch, jax.random.key(0))
    new = state
    for _ in range(2):
        new, metrics = compiled(new, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    assert int(new["step"]) == 2
    assert all(not np.allclose(a, b) for a, b in zip(_variances(state), _variances(new)))


def test_vit_smoke_run(data_dir, tmp_path):
    metrics = _run(load_config("vit_pathfinder", "smoke"), data_dir, tmp_path)
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("name, arg, parameters", [
    ("maxvit_pathfinder", None, 1_404_068),
    ("maxvit_pathfinder", "block_only", None),
    ("vit_pathfinder", None, 1_399_042),
    ("cnn_pathfinder", None, 277_858),
    ("cnn_pathfinder", "first_stride=2", 277_858),
])
def test_full_configs_build_for_their_data(name, arg, parameters):
    config = load_config(name, arg)
    info = data.DataInfo(kind="image_classification", features=image_features((32, 32, 1)),
                         num_classes=2)
    tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
    _, shape = state_lib.abstract_state(config, info, tx)
    count = sum(x.size for x in jax.tree.leaves(shape["params"]))
    if parameters is not None:
        assert count == parameters
    assert config.best_metric == "accuracy" and config.data.representation == "image"
    if arg == "block_only":
        assert not config.model.grid_attention


def test_pathfinder_image_configs_share_data_and_budget():
    """The experiments/maxvit comparison: every model on the same images for the same steps."""
    configs = [load_config(name, "difficulty=easy")
               for name in ("maxvit_pathfinder", "vit_pathfinder", "cnn_pathfinder")]
    for config in configs:
        assert config.data.to_dict() == configs[0].data.to_dict()
        assert config.optimizer.to_dict() == configs[0].optimizer.to_dict()
        assert (config.num_train_steps, config.batch_size, config.eval_every) == (3000, 32, 500)
    assert configs[0].data.builder_config == "medium_32_easy" and configs[0].data.dihedral_augment
    assert load_config("cnn_pathfinder", "smoke").data.builder_config == "tiny"
    with pytest.raises(ValueError, match="difficulty must be 'easy' or 'hard', got 'medium'"):
        load_config("vit_pathfinder", "difficulty=medium")


@pytest.mark.parametrize("variant", ["T", "S", "B"])
def test_paper_variants_fit_pathfinder_32(variant):
    config = load_config("maxvit_pathfinder", f"variant={variant}")
    settings = models.model_settings(config.model, dtype="float32", num_classes=2,
                                     image_shape=(32, 32, 1))
    assert settings.channels == maxvit.VARIANTS[variant]["channels"]
    settings.check_sizes()  # window = grid = (4, 4, 2, 1) divides the 8, 4, 2, 1 stage maps


def test_imagenet_config_is_the_papers_recipe():
    config = load_config("maxvit_imagenet", "variant=B")
    assert config.batch_size == 4096 and config.num_train_steps == 300 * (1_281_167 // 4096)
    assert config.optimizer.learning_rate == 3e-3 and config.optimizer.weight_decay == 0.05
    assert config.label_smoothing == 0.1 and config.model.mixup_alpha == 0.8
    assert config.model.stochastic_depth == 0.4 and config.model.depths == (2, 6, 14, 2)
    assert config.data.name == "imagenet2012" and config.optimizer.ema_decay == 0.9999
    assert (config.data.randaugment_layers, config.data.randaugment_magnitude) == (2, 15.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        load_config("maxvit_imagenet", "variant=L")
    # Its data on mock ImageNet (images of random sizes): 224 x 224 batches, augmented to train.
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        dataset = data.build(config.data, seed=0)
        batch = dataset.train_batch(0, global_batch_size=2)
    assert dataset.info.image_shape == (224, 224, 3) and batch["image"].shape == (2, 224, 224, 3)


def test_mixup_is_a_weighted_pair_of_cross_entropies():
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.random((6, 4, 4, 1), np.float32)),
             "label": jnp.asarray(rng.integers(0, 3, 6), jnp.int32),
             "weights": jnp.ones(6, jnp.float32)}
    image, labels, weights, perm = tasks.mixup(batch, 0.8, jax.random.key(0))
    lam = float(weights[0])
    assert 0 < lam < 1 and np.allclose(weights, np.repeat([lam, 1 - lam], 6))
    np.testing.assert_allclose(image, lam * batch["image"] + (1 - lam) * batch["image"][perm],
                               rtol=1e-6)
    np.testing.assert_array_equal(labels, np.concatenate([batch["label"],
                                                          batch["label"][perm]]))
    assert float(weights.sum()) == pytest.approx(6.0)
