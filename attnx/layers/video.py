"""Video self-attention over `[B, T, S, D]` clip tokens (time-major), and learned key frames.

`VideoSelfAttention` owns the query/key/value projection (one Dense `D -> 3D` read as
`[3, N, H]`), the heads and the output projection, and runs a 'video'-layout mechanism of the
registry (`attnx/attention/video.py`) by name. With the option `key_frames='learned:k'` the
key frames are chosen per clip by a `KeyFrameSelector`, which owns the scorer's parameters (the
attention function stays pure).

`KeyFrameSelector` scores every frame with a Dense layer on its mean-pooled tokens, picks the k
best real frames (`lax.top_k`) and calls `keyframe_attention` with those indices and
`kv_scale = sigmoid(score)` of the chosen frames, which multiplies their keys and values. The
scorer learns through that scale; the choice of indices itself is not differentiated (top-k is
piecewise constant).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import registry, video

Array = jax.Array

# Key frames chosen by a KeyFrameSelector: `key_frames='learned:<k>'`.
LEARNED_PREFIX = "learned:"


def learned_key_frames(key_frames: Any) -> int | None:
    """k of a `'learned:k'` key-frame option (an int >= 1), None for any other value."""
    if not isinstance(key_frames, str) or not key_frames.startswith(LEARNED_PREFIX):
        return None
    value = key_frames[len(LEARNED_PREFIX):]
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"key_frames={key_frames!r}: learned key frames are 'learned:k' with "
                         f"an int k >= 1, got {value!r}")
    return int(value)


class KeyFrameSelector(nnx.Module):
    """Scores frames and attends to the top-k of each clip (see the module docstring).

    Args:
      d_model: D, the width of the frame tokens it scores.
      num_key_frames: k.
    """

    def __init__(self, d_model: int, num_key_frames: int, *, dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.num_key_frames = num_key_frames
        self.score = nnx.Linear(d_model, 1, dtype=dtype, rngs=rngs)

    def check_frames(self, frames: int) -> None:
        """ValueError unless k <= T."""
        if self.num_key_frames > frames:
            raise ValueError(f"key_frames='learned:{self.num_key_frames}' asks for more key "
                             f"frames than the clip's T={frames} frames")

    def select(self, x: Array, frame_mask: Array | None = None) -> tuple[Array, Array]:
        """x `[B, T, S, D]` -> (key-frame indices `[B, k]` int32, their `sigmoid(score)` `[B, k]`).

        Padded frames are chosen only when a clip has fewer than k real frames (and then their
        keys are masked anyway)."""
        b, t = x.shape[:2]
        self.check_frames(t)
        scores = self.score(x.mean(axis=2).reshape(b * t, -1)).reshape(b, t).astype(jnp.float32)
        ranked = scores if frame_mask is None else jnp.where(frame_mask, scores, -1e9)
        _, index = jax.lax.top_k(jax.lax.stop_gradient(ranked), self.num_key_frames)
        return index, jax.nn.sigmoid(jnp.take_along_axis(scores, index, axis=1))

    def __call__(self, q: Array, k: Array, v: Array, x: Array, *,
                 frame_mask: Array | None = None, **options: Any) -> Array:
        """`keyframe_attention` of q, k, v `[B, T, S, N, H]` on the key frames chosen from the
        frame tokens x `[B, T, S, D]`; `options` are its other keyword arguments."""
        index, scale = self.select(x, frame_mask)
        return video.keyframe_attention(q, k, v, key_frames=index, kv_scale=scale,
                                        frame_mask=frame_mask, **options)


class VideoSelfAttention(nnx.Module):
    """Multi-head self-attention of a 'video' mechanism: `[B, T, S, D] -> [B, T, S, D]`.

    Args:
      d_model: D (a multiple of num_heads).
      num_heads: N.
      mechanism: a registry name of the 'video' layout ('temporal', 'spatial', 'joint',
        'factorized_heads', 'keyframe').
      options: the mechanism's options; `key_frames='learned:k'` adds a `KeyFrameSelector`.
      attention_dropout: dropout rate on the attention weights.
    """

    def __init__(self, d_model: int, num_heads: int, mechanism: str, *,
                 options: Mapping[str, Any] | None = None, attention_dropout: float = 0.0,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
        self.mechanism = registry.get(mechanism)
        if self.mechanism.layout != "video":
            raise ValueError(f"mechanism={mechanism!r} attends over {self.mechanism.layout!r} "
                             "inputs; VideoSelfAttention takes the 'video' mechanisms "
                             f"{registry.names(layout='video')}")
        options = dict(options or {})
        self.mechanism.check_options(options)
        learned = learned_key_frames(options.get("key_frames"))
        self.selector = (None if learned is None else
                         KeyFrameSelector(d_model, learned, dtype=dtype, rngs=rngs))
        if learned is not None:
            del options["key_frames"]
        self.options = options
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nnx.Linear(d_model, 3 * d_model, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, *, frame_mask: Array | None = None, causal: bool = False,
                 rng: Array | None = None) -> Array:
        """x `[B, T, S, D]`, frame_mask `[B, T]` (True = real frame); rng None: no dropout."""
        b, t, s, d = x.shape
        qkv = self.qkv(x.reshape(-1, d)).reshape(b, t, s, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        rate = self.attention_dropout if rng is not None else 0.0
        kwargs = dict(self.options, frame_mask=frame_mask, causal=causal, dropout_rate=rate,
                      dropout_rng=rng if rate else None)
        if self.selector is not None:
            out = self.selector(q, k, v, x, **kwargs)
        else:
            out = self.mechanism.fn(q, k, v, **kwargs)
        return self.out(out.reshape(-1, d)).reshape(b, t, s, d)
