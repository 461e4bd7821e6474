"""The video transformer (`attnx/models/video.py`) and its configs: every block and pooling
builds and fits the clips, padded frames do not change the logits, bad sizes fail at build
naming the field, the `:ucf101` variant reads TFDS `ucf101` by name (mock data, where
TensorFlow is installed), and smoke runs on the `tiny` moving digits: `video_divided:smoke`
end to end through `train_and_evaluate`, `video_keyframe:smoke` with learned key frames for two
train steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from attnx import data, train
from attnx.models import video
from helpers import fast_jit, load_config, train_setup

TINY = dict(num_classes=4, clip_shape=(4, 8, 8, 1), patch_size=4, d_model=16, num_heads=2,
            num_layers=1, d_ff=32)


def _abstract_logits(cfg: video.VideoConfig, batch: int = 2):
    model = nnx.eval_shape(lambda: video.VideoTransformer(cfg, rngs=nnx.Rngs(0)))
    clip = jax.ShapeDtypeStruct((batch, *cfg.clip_shape), jnp.float32)
    mask = jax.ShapeDtypeStruct((batch, cfg.clip_shape[0]), jnp.bool_)
    graphdef, state = nnx.split(model)
    logits = jax.eval_shape(lambda s, c, m: nnx.merge(graphdef, s)(c, m), state, clip, mask)
    return logits, sum(x.size for x in jax.tree.leaves(state))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_every_block_builds_and_fits_the_clips(pool):
    sizes = {}
    for block in video.BLOCKS:
        cfg = video.VideoConfig(**TINY, block=block, pool=pool)
        logits, sizes[block] = _abstract_logits(cfg)
        assert logits.shape == (2, 4) and logits.dtype == jnp.float32
    learned, sizes["learned"] = _abstract_logits(video.VideoConfig(
        **TINY, block="keyframe", key_frames="learned:2", pool=pool))
    # Divided blocks hold a second attention; the selector's scorer is D + 1 parameters; the
    # factorized encoder adds its temporal block.
    attention = 4 * (16 * 16 + 16) + 2 * 16
    assert sizes["divided"] - sizes["joint"] == attention
    assert sizes["learned"] - sizes["keyframe"] == 16 + 1
    assert sizes["factorized_encoder"] > sizes["joint"] == sizes["factorized_heads"]


@pytest.mark.parametrize("block, key_frames", [("divided", "stride:2"),
                                               ("keyframe", "learned:2")])
def test_padded_frames_do_not_change_the_logits(block, key_frames):
    cfg = video.VideoConfig(**TINY, block=block, key_frames=key_frames, pool="cls")
    model = video.VideoTransformer(cfg, rngs=nnx.Rngs(1))
    clip = jax.random.uniform(jax.random.key(0), (2, *cfg.clip_shape))
    frame_mask = jnp.array([[True] * 4, [True, True, False, False]])
    garbage = clip.at[1, 2:].set(jax.random.uniform(jax.random.key(1), (2, 8, 8, 1)))
    forward = jax.jit(lambda c: model(c, frame_mask))
    logits = forward(clip)
    np.testing.assert_allclose(forward(garbage), logits, atol=1e-5)
    assert np.abs(np.asarray(logits[0] - logits[1])).max() > 1e-4


def test_bad_sizes_fail_at_build_naming_the_field():
    cases = [(dict(block="keyframe", key_frames="learned:5"), "learned=5 key frames exceed"),
             (dict(block="keyframe", key_frames="stride:0"), "the stride must be an int >= 1"),
             (dict(block="keyframe", key_frames="learned:0"), "'learned:k' with an int k >= 1"),
             (dict(patch_size=3), "model.patch_size=3 must divide"),
             (dict(tubelet_frames=3), "model.tubelet_frames=3 must divide")]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            video.VideoTransformer(video.VideoConfig(**{**TINY, **fields}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.block must be one of"):
        video.VideoConfig(**TINY, block="sparse")
    model = video.VideoTransformer(video.VideoConfig(**TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"clip must be \[batch, \*\(4, 8, 8, 1\)\]"):
        model(jnp.zeros((2, 3, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"frame_mask must be \[batch, frames\] = \(2, 4\)"):
        model(jnp.zeros((2, 4, 8, 8, 1)), jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="block must be one of"):
        load_config("video_divided", "block=keyframe")


def test_ucf101_variant_reads_tfds_ucf101_with_vivit_b_sizes():
    for name in ("video_divided", "video_keyframe"):
        config = load_config(name, "ucf101")
        assert (config.data.name, config.data.builder_config, config.data.num_frames) == (
            "ucf101", "ucf101_1_256", 16)
        train.validate(config)
    cfg = video.VideoConfig(num_classes=101, clip_shape=(16, 256, 256, 3),
                            **{k: v for k, v in load_config("video_divided", "ucf101,block=joint")
                               .model.items() if k != "name"})
    logits, params = _abstract_logits(cfg, batch=1)
    assert logits.shape == (1, 101) and params == 86_518_373  # ViViT-B/16x2 at 256 px


def test_ucf101_by_name_with_mock_data():
    pytest.importorskip("tensorflow", reason="TFDS's ucf101 Video feature needs TensorFlow")
    config = load_config("video_divided", "ucf101").data
    config.num_frames = 4
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        assert ds.info.clip_shape == (4, 256, 256, 3) and ds.info.num_classes == 101
        batch = ds.train_batch(0, global_batch_size=2)
        assert batch["video"].shape == (2, 4, 256, 256, 3)


def test_divided_smoke_run(data_dir, tmp_path):
    config = load_config("video_divided", "smoke")
    config.data.data_dir = data_dir
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


def test_keyframe_smoke_steps_train_the_learned_selector(data_dir):
    """`video_keyframe:smoke,key_frames=learned:2`: two train steps of the config (a second
    `train_and_evaluate` would double this file's time) move the selector's scorer."""
    config = load_config("video_keyframe", "smoke,key_frames=learned:2")
    config.data.data_dir = data_dir
    dataset = data.build(config.data, seed=config.seed)
    graphdef, task, tx, schedule, state = train_setup(config, dataset.info)
    step = train.make_train_step(graphdef, task, tx, schedule)
    batch = dataset.train_batch(0, global_batch_size=config.batch_size)
    compiled = fast_jit(step, state, batch, jax.random.key(0))
    new = state
    for _ in range(2):
        new, metrics = compiled(new, batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and int(new["step"]) == 2
    scorer = [(jax.tree_util.keystr(path), x) for path, x in
              jax.tree_util.tree_leaves_with_path(state["params"]) if "selector" in
              jax.tree_util.keystr(path)]
    assert len(scorer) == 2  # kernel and bias
    moved = dict(jax.tree_util.tree_leaves_with_path(new["params"]))
    for path, before in jax.tree_util.tree_leaves_with_path(state["params"]):
        if "selector" in jax.tree_util.keystr(path):
            assert not np.allclose(moved[path], before)
