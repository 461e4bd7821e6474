"""Video attention (`attnx/attention/video.py`) and learned key frames (`attnx/layers/video.py`):
reshapes, limiting cases, locality by gradients, the factorized-heads split, key-frame
identities, padding, the learned selector against a loop over frames, and bad input.

The contract checks of every registered video mechanism (dense oracle on its pattern, forward
and gradients, padded frames, causality, jit, bfloat16, dropout) run in tests/test_contract.py;
here the key-frame specs the contract example does not use are checked against their patterns.
Everything runs eagerly on clips of T = 4 frames of S = 4 tokens, 2 heads of width 8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx.attention import dense, video
from attnx.layers.video import KeyFrameSelector, VideoSelfAttention, learned_key_frames

B, T, S, N, H = 2, 4, 4, 2, 8


def _clip(seed: int = 0, frames: int = T):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(key, (B, frames, S, N, H)) for key in keys)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def _tokens(x):
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _reach(fn, q, k, v) -> np.ndarray:
    """`[T, S, T, S]`: whether the outputs at (t, s) depend on the key/value token (t', s'), by
    gradients (one jitted Jacobian of the outputs summed over batch, heads and features)."""

    def outputs(k, v):
        return fn(q, k, v).sum(axis=(0, 3, 4))  # [T, S]

    jacobians = jax.jit(jax.jacrev(outputs, argnums=(0, 1)))(k, v)  # [T, S, B, T, S, N, H]
    return sum(np.abs(np.asarray(j)).max(axis=(2, 5, 6)) for j in jacobians) > 0


# ----------------------------------------------------------------------------- reshapes


def test_reshapes_round_trip_and_name_their_layout():
    x = jnp.arange(B * T * S * 3).reshape(B, T, S, 3)
    temporal, spatial, joint = video.to_temporal(x), video.to_spatial(x), video.to_joint(x)
    assert temporal.shape == (B * S, T, 3) and spatial.shape == (B * T, S, 3)
    assert joint.shape == (B, T * S, 3)
    np.testing.assert_array_equal(video.from_temporal(temporal, B), x)
    np.testing.assert_array_equal(video.from_spatial(spatial, B), x)
    np.testing.assert_array_equal(video.from_joint(joint, T), x)
    # Sequence (b, s) of the temporal layout is location s over the frames; joint is time-major.
    np.testing.assert_array_equal(temporal[1 * S + 2], x[1, :, 2])
    np.testing.assert_array_equal(spatial[1 * T + 3], x[1, 3])
    np.testing.assert_array_equal(joint[0, 2 * S + 1], x[0, 2, 1])


# ----------------------------------------------------------------------------- limiting cases


def test_one_frame_temporal_attention_returns_each_tokens_value():
    q, k, v = _clip(frames=1)
    _close(video.temporal_attention(q, k, v), v, tol=1e-6)
    _close(video.temporal_attention(q, k, v, causal=True), v, tol=1e-6)


def test_temporal_and_spatial_locality_by_gradients():
    q, k, v = _clip()
    frame = np.arange(T)[:, None, None, None], np.arange(T)[None, None, :, None]
    location = np.arange(S)[None, :, None, None], np.arange(S)[None, None, None, :]
    same_frame = np.broadcast_to(frame[0] == frame[1], (T, S, T, S))
    same_location = np.broadcast_to(location[0] == location[1], (T, S, T, S))
    np.testing.assert_array_equal(_reach(video.temporal_attention, q, k, v), same_location)
    np.testing.assert_array_equal(_reach(video.spatial_attention, q, k, v), same_frame)
    assert _reach(video.joint_attention, q, k, v).all()
    causal = _reach(lambda *x: video.temporal_attention(*x, causal=True), q, k, v)
    np.testing.assert_array_equal(causal, same_location & (frame[1] <= frame[0]))


def test_factorized_heads_are_temporal_heads_then_spatial_heads():
    q, k, v = _clip()
    out = video.factorized_heads_attention(q, k, v, causal=True)
    _close(out[..., :1, :], video.temporal_attention(q[..., :1, :], k[..., :1, :],
                                                     v[..., :1, :], causal=True))
    _close(out[..., 1:, :], video.spatial_attention(q[..., 1:, :], k[..., 1:, :], v[..., 1:, :]))
    # Three heads, one temporal: the split follows temporal_heads.
    q3, k3, v3 = (jnp.concatenate([x, x[..., :1, :]], axis=3) for x in (q, k, v))
    out3 = video.factorized_heads_attention(q3, k3, v3, temporal_heads=1)
    _close(out3[..., 1:, :], video.spatial_attention(q3[..., 1:, :], k3[..., 1:, :],
                                                     v3[..., 1:, :]))


# ----------------------------------------------------------------------------- key frames


def test_all_frames_as_key_frames_is_joint_attention():
    q, k, v = _clip()
    for key_frames, include_self, causal in ((list(range(T)), True, False),
                                             ("stride:1", False, True)):
        out = video.keyframe_attention(q, k, v, key_frames=key_frames,
                                       include_self=include_self, causal=causal)
        _close(out, video.joint_attention(q, k, v, causal=causal))


def test_no_key_frames_with_self_is_spatial_attention():
    q, k, v = _clip()
    _close(video.keyframe_attention(q, k, v, key_frames=[]), video.spatial_attention(q, k, v))


def test_stride_at_least_t_is_the_anchor():
    q, k, v = _clip()
    anchor = video.keyframe_attention(q, k, v, key_frames="anchor")
    for stride in (T, T + 3):
        _close(video.keyframe_attention(q, k, v, key_frames=f"stride:{stride}"), anchor)
    _close(video.keyframe_attention(q, k, v, key_frames=[0]), anchor)


def test_a_non_key_frame_has_no_influence_on_other_frames():
    q, k, v = _clip()
    for key_frames, keys in (("stride:2", [0, 2]), ([0, 2], [0, 2]), ("anchor", [0])):
        reach = _reach(lambda *x: video.keyframe_attention(*x, key_frames=key_frames), q, k, v)
        frames = reach.any(axis=(1, 3))  # [query frame, key frame]
        expected = np.isin(np.arange(T), keys)[None, :] | np.eye(T, dtype=bool)
        np.testing.assert_array_equal(frames, expected)  # a non-key frame reaches itself only
        np.testing.assert_array_equal(reach, np.repeat(np.repeat(expected, S, 0), S, 1)
                                      .reshape(T, S, T, S))


def test_anchor_plus_previous_frames_hand_computed():
    index, valid = video.key_frame_columns("anchor+previous", T, B)
    # Query frame t: frame 0 and frame t - 1 (no repeat of frame 0 at t = 1, none before t = 0).
    np.testing.assert_array_equal(index[0], [[0, 0], [0, 0], [0, 1], [0, 2]])
    np.testing.assert_array_equal(valid[0], [[True, False], [True, False], [True, True],
                                             [True, True]])
    q, k, v = _clip()
    pattern = video.keyframe_pattern(q, k, key_frames="anchor+previous", include_self=False)
    frames = np.asarray(pattern[0, 0, ::S, ::S])  # query frame x key frame
    np.testing.assert_array_equal(frames, [[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0],
                                           [1, 0, 1, 0]])


@pytest.mark.parametrize("key_frames, include_self, causal", [
    ("anchor+previous", True, False), ([3, 1], False, True), (np.array([[2], [1]]), True, False)])
def test_key_frame_specs_equal_the_dense_oracle_on_their_pattern(key_frames, include_self,
                                                                 causal):
    q, k, v = _clip(1)
    frame_mask = jnp.ones((B, T), bool).at[1, 2:].set(False)
    options = dict(key_frames=key_frames, include_self=include_self, frame_mask=frame_mask,
                   causal=causal)

    def ours(q, k, v):
        return video.keyframe_attention(q, k, v, **options)

    def oracle(q, k, v):
        pattern = video.keyframe_pattern(q, k, **options)
        return dense.attention(_tokens(q), _tokens(k), _tokens(v), mask=pattern).reshape(q.shape)

    _close(ours(q, k, v), oracle(q, k, v))
    loss = lambda f: lambda *xs: jnp.sum(jnp.sin(f(*xs)))
    for grad, want in zip(jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v),
                          jax.grad(loss(oracle), argnums=(0, 1, 2))(q, k, v)):
        assert np.abs(np.asarray(want)).max() > 1e-3
        _close(grad, want)


def test_padded_frames_receive_no_weight():
    """(Every mechanism's padding by gradients: tests/test_contract.py.)"""
    q, k, v = _clip()
    frame_mask = jnp.array([[True] * T, [True, True, False, False]])
    noise = 1e3 * jax.random.normal(jax.random.key(5), v.shape)
    padded = jnp.where(frame_mask[:, :, None, None, None], v, noise)
    padded_k = jnp.where(frame_mask[:, :, None, None, None], k, noise)
    functions = [video.temporal_attention,
                 lambda *x, **kw: video.keyframe_attention(*x, key_frames="stride:1", **kw)]
    for fn in functions:
        clean = fn(q, k, v, frame_mask=frame_mask)
        _close(fn(q, padded_k, padded, frame_mask=frame_mask)[:, :2], clean[:, :2], tol=1e-4)
        # Only the real frames: the same as attention over the clip cut to them.
        _close(clean[1:, :2], fn(q[1:, :2], k[1:, :2], v[1:, :2]))
    # Spatial attention: the queries of a padded frame have no key.
    assert np.all(np.asarray(video.spatial_attention(q, k, v, frame_mask=frame_mask))[1, 2:] == 0)


# ----------------------------------------------------------------------------- learned key frames


def _selector_reference(selector, q, k, v, x, frame_mask, include_self):
    """A loop over clips and query frames, float64: scores, top-k, scaled keys/values."""
    q, k, v, x = (np.asarray(a, np.float64) for a in (q, k, v, x))
    w = np.asarray(selector.score.kernel[...], np.float64)[:, 0]
    bias = float(selector.score.bias[...][0])
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        scores = x[b].mean(axis=1) @ w + bias  # [T]
        ranked = np.where(frame_mask[b], scores, -np.inf)
        chosen = list(np.argsort(-ranked, kind="stable")[: selector.num_key_frames])
        for t in range(q.shape[1]):
            frames = [(f, 1 / (1 + np.exp(-scores[f]))) for f in chosen]
            if include_self and t not in chosen:
                frames.append((t, 1.0))
            frames = [(f, c) for f, c in frames if frame_mask[b, f]]
            keys = np.concatenate([c * k[b, f] for f, c in frames])  # [C*S, N, H]
            values = np.concatenate([c * v[b, f] for f, c in frames])
            logits = np.einsum("snh,cnh->nsc", q[b, t], keys) / np.sqrt(q.shape[-1])
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out[b, t] = np.einsum("nsc,cnh->snh", weights, values)
    return out


@pytest.fixture(scope="module")
def selector():
    return KeyFrameSelector(16, 2, rngs=nnx.Rngs(0))


def test_learned_key_frames_equal_a_loop_over_frames(selector):
    q, k, v = _clip(2)
    x = jax.random.normal(jax.random.key(3), (B, T, S, 16))
    frame_mask = np.array([[True] * T, [True, True, True, False]])
    for include_self in (True, False):
        out = selector(q, k, v, x, frame_mask=jnp.asarray(frame_mask), include_self=include_self)
        _close(out, _selector_reference(selector, q, k, v, x, frame_mask, include_self), 1e-4)
    index, scale = selector.select(x, jnp.asarray(frame_mask))
    assert index.shape == scale.shape == (B, 2) and 3 not in np.asarray(index)[1]


def test_learned_selector_passes_gradients_to_its_scorer(selector):
    q, k, v = _clip(4)
    x = jax.random.normal(jax.random.key(5), (B, T, S, 16))
    graphdef, params = nnx.split(selector)

    def loss(params):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(q, k, v, x)))

    grads = jax.grad(loss)(params)
    assert np.abs(np.asarray(grads["score"]["kernel"][...])).max() > 1e-4
    assert np.abs(np.asarray(grads["score"]["bias"][...])).max() > 1e-4


def test_module_with_learned_key_frames_owns_a_selector():
    layer = VideoSelfAttention(16, 2, "keyframe", options={"key_frames": "learned:2"},
                               rngs=nnx.Rngs(0))
    assert isinstance(layer.selector, KeyFrameSelector) and layer.options == {}
    out = layer(jax.random.normal(jax.random.key(0), (B, T, S, 16)))
    assert out.shape == (B, T, S, 16) and np.all(np.isfinite(np.asarray(out)))
    assert VideoSelfAttention(16, 2, "temporal", rngs=nnx.Rngs(0)).selector is None


# ----------------------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
    q, k, v = _clip()
    with pytest.raises(ValueError, match=r"q must be a video \[batch, frames, tokens"):
        video.temporal_attention(q[:, 0], k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match="q, k and v must agree"):
        video.joint_attention(q, k[:, :2], v[:, :2])
    with pytest.raises(ValueError, match=r"frame_mask must be \[batch, frames\] = \(2, 4\)"):
        video.spatial_attention(q, k, v, frame_mask=jnp.ones((B, T + 1), bool))
    with pytest.raises(ValueError, match="mask must be None.*frame_mask"):
        video.temporal_attention(q, k, v, mask=jnp.ones((B, T * S), bool))
    with pytest.raises(ValueError, match="causal must be False for spatial"):
        video.spatial_attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match=r"key_frames indices must be in \[0, T\) = \[0, 4\)"):
        video.keyframe_attention(q, k, v, key_frames=[0, 4])
    with pytest.raises(ValueError, match="key_frames must be distinct"):
        video.keyframe_attention(q, k, v, key_frames=[1, 1])
    for spec in ("stride:0", "stride:-1", "stride:x"):
        with pytest.raises(ValueError, match="the stride must be an int >= 1"):
            video.keyframe_attention(q, k, v, key_frames=spec)
    with pytest.raises(ValueError, match="not a key-frame spec.*anchor\\+previous"):
        video.keyframe_attention(q, k, v, key_frames="middle")
    with pytest.raises(ValueError, match="empty and include_self=False"):
        video.keyframe_attention(q, k, v, key_frames=[], include_self=False)
    with pytest.raises(ValueError, match=r"kv_scale must be \[batch, key frames\] = \(2, 2\)"):
        video.keyframe_attention(q, k, v, key_frames=[0, 1], kv_scale=jnp.ones((B, 3)))
    with pytest.raises(ValueError, match="temporal_heads must be between 1 and heads - 1"):
        video.factorized_heads_attention(q, k, v, temporal_heads=2)
    with pytest.raises(ValueError, match="at least 2 heads"):
        video.factorized_heads_attention(q[..., :1, :], k[..., :1, :], v[..., :1, :])
    with pytest.raises(ValueError, match="'learned:5' asks for more key frames than the "
                                         "clip's T=4"):
        KeyFrameSelector(16, 5, rngs=nnx.Rngs(0))(q, k, v, jnp.zeros((B, T, S, 16)))
    with pytest.raises(ValueError, match="'learned:k' with an int k >= 1"):
        learned_key_frames("learned:0")
    with pytest.raises(ValueError, match="VideoSelfAttention takes the 'video' mechanisms"):
        VideoSelfAttention(16, 2, "dense", rngs=nnx.Rngs(0))
