"""MaxViT (`attnx/models/maxvit.py`) and its layers: logits equal timm's official-convention
(`_tf_`) MaxxVit on stored weights and inputs, T/S/B parameter counts match the paper, bad sizes
fail at build, stochastic depth draws per example. (BatchNorm statistics through training and
evaluation: tests/test_maxvit_train.py.)

The parity vectors are `tests/testdata/timm_maxvit_tf_small.npz`, written by
`scripts/make_maxvit_parity.py` (timm + PyTorch in a venv of their own; not needed here).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx.layers.mbconv import drop_path
from attnx.models import maxvit
from helpers import fast_jit

PARITY = os.path.join(os.path.dirname(__file__), "testdata", "timm_maxvit_tf_small.npz")
# The stored model's settings (scripts/make_maxvit_parity.py: SMALL).
SMALL = dict(image_shape=(64, 128, 3), num_classes=10, stem_width=16, channels=(32, 32, 64),
             depths=(1, 2, 1), head_dim=16, window=4, grid=2, head_hidden_size=64)

# Our module names -> timm's.
_MODULES = {
    "stem_conv1": "stem.conv1", "stem_norm": "stem.norm1", "stem_conv2": "stem.conv2",
    "shortcut_proj": "shortcut.expand", "pre_norm": "pre_norm", "expand": "conv1_1x1",
    "expand_norm": "norm1", "depthwise": "conv2_kxk", "depthwise_norm": "norm2",
    "reduce": "fc1", "project": "conv3_1x1", "attention_norm": "norm1", "qkv": "attn.qkv",
    "proj": "attn.proj", "mlp_norm": "norm2", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2",
    "head_norm": "head.norm", "pre_logits": "head.pre_logits.fc", "classifier": "head.fc",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var", "bias_table": "attn.rel_pos.relative_position_bias_table"}


def _timm_name(path: tuple, stage_of_block: list[tuple[int, int]]) -> str:
    """timm's state-dict key of one of our variables (its path in `nnx.state(model)`)."""
    parts, rest = [], list(path)
    while rest:
        key = rest.pop(0)
        if key == "blocks":
            s, j = stage_of_block[rest.pop(0)]
            parts.append(f"stages.{s}.blocks.{j}")
        elif key == "mbconv":
            parts.append("conv")
        elif key == "attentions":
            parts.append(("attn_block", "attn_grid")[rest.pop(0)])
        elif key in ("attention", "se"):
            parts.append("se" if key == "se" else "")
        elif key == "expand" and parts[-1] == "se":
            parts.append("fc2")
        elif not rest:
            parts.append(_LEAVES[key])
        else:
            parts.append(_MODULES[key])
    return ".".join(p for p in parts if p)


def _to_ours(weight: np.ndarray, like: tuple[int, ...]) -> np.ndarray:
    """A PyTorch weight in our layout: conv `[O, I, kh, kw]` -> `[kh, kw, I, O]`, linear (or 1x1
    conv read as linear) `[O, I]` -> `[I, O]`."""
    if weight.ndim == 4 and len(like) == 4:
        return weight.transpose(2, 3, 1, 0)
    if weight.ndim in (2, 4) and len(like) == 2:
        return weight.reshape(weight.shape[:2]).T
    return weight


def _timm_model(arrays) -> maxvit.MaxViT:
    """The stored timm weights in our model, built abstractly (nothing randomly initialised)."""
    abstract = nnx.eval_shape(lambda: maxvit.MaxViT(maxvit.MaxViTConfig(**SMALL),
                                                    rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    stage_of_block = [(s, j) for s, depth in enumerate(SMALL["depths"]) for j in range(depth)]
    flat = nnx.to_flat_state(state)
    loaded = []
    for path, variable in flat:
        name = "param/" + _timm_name(path, stage_of_block)
        value = _to_ours(arrays[name], variable.shape)
        assert value.shape == variable.shape, (path, name, value.shape, variable.shape)
        loaded.append((path, variable.replace(jnp.asarray(value))))
    assert len(loaded) == sum(k.startswith("param/") for k in arrays.files)  # one home each
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def test_logits_equal_timm_official_convention():
    arrays = np.load(PARITY)
    graphdef, state = nnx.split(_timm_model(arrays))
    image = jnp.asarray(arrays["image"])
    forward = fast_jit(lambda state, image: nnx.merge(graphdef, state)(image), state, image)
    logits, want = np.asarray(forward(state, image)), arrays["logits"]
    assert np.abs(want).max() > 0.1 and np.abs(want[0] - want[1]).max() > 1e-2
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)


def _params(build) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(build), nnx.Param)))


@pytest.mark.parametrize("variant, paper", [("T", 31e6), ("S", 69e6), ("B", 119e6)])
def test_parameter_counts_match_the_paper(variant, paper):
    """Counted with `eval_shape`: the model with one block per stage, plus each stage's further
    (identical, stride-1) blocks counted once and multiplied (tracing all 24 blocks of B at once
    is slow in this JAX/Flax pair: the tracing time grows with the square of the layers)."""
    cfg = maxvit.MaxViTConfig(num_classes=1000, image_shape=(224, 224, 3),
                              **maxvit.VARIANTS[variant])
    single = dataclasses.replace(cfg, depths=(1,) * len(cfg.depths))
    count = _params(lambda: maxvit.MaxViT(single, rngs=nnx.Rngs(0)))
    for c, depth, window, grid in zip(cfg.channels, cfg.depths, cfg.window, cfg.grid):
        count += (depth - 1) * _params(lambda: maxvit.MaxViTBlock(
            c, c, stride=1, window=window, grid=grid, drop_path_rate=0.0, cfg=cfg,
            rngs=nnx.Rngs(0)))
    assert abs(count - paper) / paper < 0.01, count


def test_sizes_that_do_not_divide_fail_at_build_naming_the_stage():
    with pytest.raises(ValueError, match=r"stage 3: its 4x8 feature map .* window=3"):
        maxvit.MaxViTConfig(**{**SMALL, "window": (4, 4, 3)}).check_sizes()
    with pytest.raises(ValueError, match=r"stage 3: its 7x7 feature map .* grid=2"):
        maxvit.MaxViT(maxvit.MaxViTConfig(**{**SMALL, "image_shape": (112, 112, 3),
                                             "window": 7}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"stage 2: its input map 7x7 .* is odd"):
        maxvit.MaxViTConfig(**{**SMALL, "image_shape": (28, 28, 3), "window": 1,
                               "grid": 1}).check_sizes()
    with pytest.raises(ValueError, match="model.window must be"):
        maxvit.MaxViTConfig(**{**SMALL, "window": (4, 4)})
    model = nnx.eval_shape(lambda: maxvit.MaxViT(maxvit.MaxViTConfig(**SMALL), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"image must be \[batch, \*\(64, 128, 3\)\]"):
        model(jnp.zeros((1, 64, 128, 1)))
    with pytest.raises(ValueError, match="image must be"):
        model(jnp.zeros((64, 128, 3)))


def test_stochastic_depth_drops_whole_examples_rising_linearly_with_depth():
    x = jnp.ones((64, 2, 2, 3))
    per_example = np.asarray(drop_path(x, 0.5, jax.random.key(0))).reshape(64, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0 < (per_example[:, 0] == 0).sum() < 64
    assert drop_path(x, 0.5, None) is x
    cfg = maxvit.MaxViTConfig(**{**SMALL, "stochastic_depth": 0.3})
    model = nnx.eval_shape(lambda: maxvit.MaxViT(cfg, rngs=nnx.Rngs(0)))
    for block, want in zip(model.blocks, [0.0, 0.1, 0.2, 0.3]):
        rates = [block.mbconv.drop_path_rate] + [a.drop_path_rate for a in block.attentions]
        np.testing.assert_allclose(rates, want)
