"""Video attention: temporal, spatial, joint space-time, factorized heads and key-frame attention.

Video q, k, v are `[B, T, S, N, H]`, time-major: T frames (or tubelets), then the S spatial tokens
of a frame; patterns number the T*S tokens time-major (token t * S + s). Each mechanism is an
explicit reshape around the dense softmax (`dense.attention`, float32 statistics), with the
layout named at every reshape:

- `temporal_attention`: each spatial location s attends across the frames, `[B*S, T, N, H]`
  (TimeSformer's time attention);
- `spatial_attention`: each frame attends within itself, `[B*T, S, N, H]`;
- `joint_attention`: all T*S tokens attend to all, `[B, T*S, N, H]` (ViViT model 1);
- `factorized_heads_attention`: the first `temporal_heads` heads temporal, the others spatial
  (ViViT model 4, "factorised dot-product attention");
- `keyframe_attention`: the queries of every frame attend to the tokens of the key frames and,
  with `include_self`, of their own frame (key-frame propagation with a fixed stride,
  Text2Video-Zero's first frame, Tune-A-Video's first + previous frame).

Padded frames are masked with `frame_mask` `[B, T]` (True = real frame); `mask` must be None (a
video mechanism never sees a token-level mask). `causal=True` is frame-causal: a query of frame t
sees keys of frames t' <= t (temporal, joint, the temporal heads of factorized heads, and
key-frame attention, which then drops key frames later than the query's frame). Spatial attention
has no time order and refuses it. A query with no key to attend returns zeros.
"""

from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from attnx.attention import _common, dense

Array = jax.Array

# Key frames: explicit indices (a list, or an int array `[K]` / `[B, K]` per example) or a spec.
KeyFrames = Union[str, Sequence[int], np.ndarray, Array]
KEY_FRAME_SPECS = ("stride:<s>", "anchor", "anchor+previous")


# ----------------------------------------------------------------------------- reshapes


def to_temporal(x: Array) -> Array:
    """`[B, T, S, ...]` -> `[B*S, T, ...]`: one sequence over the frames per spatial location."""
    b, t, s, *rest = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(b * s, t, *rest)


def from_temporal(x: Array, batch: int) -> Array:
    """The inverse of `to_temporal`: `[B*S, T, ...]` -> `[B, T, S, ...]`."""
    bs, t, *rest = x.shape
    return jnp.swapaxes(x.reshape(batch, bs // batch, t, *rest), 1, 2)


def to_spatial(x: Array) -> Array:
    """`[B, T, S, ...]` -> `[B*T, S, ...]`: one sequence per frame."""
    b, t, s, *rest = x.shape
    return x.reshape(b * t, s, *rest)


def from_spatial(x: Array, batch: int) -> Array:
    """The inverse of `to_spatial`: `[B*T, S, ...]` -> `[B, T, S, ...]`."""
    bt, s, *rest = x.shape
    return x.reshape(batch, bt // batch, s, *rest)


def to_joint(x: Array) -> Array:
    """`[B, T, S, ...]` -> `[B, T*S, ...]`, time-major tokens."""
    b, t, s, *rest = x.shape
    return x.reshape(b, t * s, *rest)


def from_joint(x: Array, frames: int) -> Array:
    """The inverse of `to_joint`: `[B, T*S, ...]` -> `[B, T, S, ...]`."""
    b, ts, *rest = x.shape
    return x.reshape(b, frames, ts // frames, *rest)


# ----------------------------------------------------------------------------- checks


def check_video(q: Array, k: Array, v: Array, mask: Array | None,
                frame_mask: Array | None) -> None:
    """ValueError unless q, k, v are videos `[B, T, S, N, H]` that fit together, `mask` is None
    and `frame_mask` is None or `[B, T]`."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 5:
            raise ValueError(f"{name} must be a video [batch, frames, tokens, heads, head_dim], "
                             f"got shape {x.shape}")
    if q.shape[:4] != k.shape[:4] or k.shape[:4] != v.shape[:4]:
        raise ValueError("q, k and v must agree in batch, frames, tokens and heads: "
                         f"q {q.shape}, k {k.shape}, v {v.shape}")
    if q.shape[4] != k.shape[4]:
        raise ValueError(f"q and k must have the same head_dim: q {q.shape[4]}, k {k.shape[4]}")
    if mask is not None:
        raise ValueError("mask must be None: video attention masks padded frames with "
                         "frame_mask [batch, frames]")
    if frame_mask is not None and tuple(jnp.shape(frame_mask)) != q.shape[:2]:
        raise ValueError(f"frame_mask must be [batch, frames] = {q.shape[:2]} (True = real "
                         f"frame), got shape {tuple(jnp.shape(frame_mask))}")


def _frame_keys(frame_mask: Array | None, batch: int, frames: int) -> Array:
    """`frame_mask` `[B, T]` as bool (all True when None)."""
    if frame_mask is None:
        return jnp.ones((batch, frames), bool)
    return jnp.asarray(frame_mask).astype(bool)


def _no_spatial_causal(causal: bool) -> None:
    if causal:
        raise ValueError("causal must be False for spatial attention: it stays inside one frame "
                         "and has no time order (temporal, joint and key-frame attention take "
                         "causal=True)")


# ----------------------------------------------------------------------------- attention


def temporal_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    frame_mask: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Each spatial location attends across the frames.

    Args:
      q, k, v: `[B, T, S, N, H]`.
      frame_mask: `[B, T]`, True = real frame; padded frames receive no weight.
      mask: must be None (the contract's argument; use frame_mask).
      causal: frame t sees frames t' <= t.
      scale: logit scale, default `1/sqrt(H)`.
      dropout_rate, dropout_rng: attention dropout on the weights.

    Returns:
      `[B, T, S, N, H]` in q's dtype.
    """
    check_video(q, k, v, mask, frame_mask)
    b, t, s = q.shape[:3]
    keys = _frame_keys(frame_mask, b, t)
    key_mask = to_temporal(jnp.broadcast_to(keys[:, :, None], (b, t, s)))  # [B*S, T]
    out = dense.attention(to_temporal(q), to_temporal(k), to_temporal(v),
                          mask=dense.key_padding_pattern(key_mask), causal=causal, scale=scale,
                          dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return from_temporal(out, b)


def spatial_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    frame_mask: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Each frame's tokens attend within the frame.

    Args:
      q, k, v: `[B, T, S, N, H]`.
      frame_mask: `[B, T]`, True = real frame; the queries of a padded frame have no key and
        return zeros.
      mask: must be None.
      causal: must be False (no time order inside a frame).
      scale, dropout_rate, dropout_rng: as `temporal_attention`.

    Returns:
      `[B, T, S, N, H]` in q's dtype.
    """
    check_video(q, k, v, mask, frame_mask)
    _no_spatial_causal(causal)
    b, t = q.shape[:2]
    keys = _frame_keys(frame_mask, b, t).reshape(b * t)[:, None, None, None]  # [B*T, 1, 1, 1]
    out = dense.attention(to_spatial(q), to_spatial(k), to_spatial(v), mask=keys, scale=scale,
                          dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return from_spatial(out, b)


def _frame_causal(frames: int, tokens: int) -> np.ndarray:
    """`[T*S, T*S]`: True where the key's frame is not later than the query's."""
    frame = np.arange(frames * tokens) // tokens
    return frame[:, None] >= frame[None, :]


def joint_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    frame_mask: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """All T*S tokens attend to all (joint space-time attention).

    Args:
      q, k, v: `[B, T, S, N, H]`.
      frame_mask: `[B, T]`, True = real frame.
      mask: must be None.
      causal: a token of frame t sees the tokens of frames t' <= t (all of frame t).
      scale, dropout_rate, dropout_rng: as `temporal_attention`.

    Returns:
      `[B, T, S, N, H]` in q's dtype.
    """
    check_video(q, k, v, mask, frame_mask)
    b, t, s = q.shape[:3]
    keys = to_joint(jnp.broadcast_to(_frame_keys(frame_mask, b, t)[:, :, None], (b, t, s)))
    allowed = dense.key_padding_pattern(keys)
    if causal:
        allowed = allowed & jnp.asarray(_frame_causal(t, s))
    out = dense.attention(to_joint(q), to_joint(k), to_joint(v), mask=allowed, scale=scale,
                          dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return from_joint(out, t)


def _temporal_heads(temporal_heads: int | None, heads: int) -> int:
    """The number of temporal heads (default half, rounded down), checked to leave both kinds."""
    if heads < 2:
        raise ValueError(f"factorized-heads attention needs at least 2 heads (temporal and "
                         f"spatial), got {heads}")
    n = heads // 2 if temporal_heads is None else temporal_heads
    _common.check_int("temporal_heads", n)
    if n >= heads:
        raise ValueError(f"temporal_heads must be between 1 and heads - 1 = {heads - 1}, got {n}")
    return n


def factorized_heads_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    temporal_heads: int | None = None,
    frame_mask: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Heads `[:temporal_heads]` attend temporally, the others spatially (ViViT model 4).

    Args:
      q, k, v: `[B, T, S, N, H]`, N >= 2.
      temporal_heads: heads of temporal attention (default N // 2); the rest are spatial.
      frame_mask: `[B, T]`, True = real frame.
      mask: must be None.
      causal: the temporal heads are frame-causal (the spatial heads only see their own frame).
      scale, dropout_rate, dropout_rng: as `temporal_attention`.

    Returns:
      `[B, T, S, N, H]` in q's dtype: temporal heads, then spatial heads.
    """
    check_video(q, k, v, mask, frame_mask)
    n = _temporal_heads(temporal_heads, q.shape[3])
    _common.check_dropout(dropout_rate, dropout_rng)
    rngs = (None, None) if dropout_rng is None else tuple(jax.random.split(dropout_rng))
    common = dict(frame_mask=frame_mask, scale=scale, dropout_rate=dropout_rate)
    temporal = temporal_attention(q[..., :n, :], k[..., :n, :], v[..., :n, :], causal=causal,
                                  dropout_rng=rngs[0], **common)
    spatial = spatial_attention(q[..., n:, :], k[..., n:, :], v[..., n:, :],
                                dropout_rng=rngs[1], **common)
    return jnp.concatenate([temporal, spatial], axis=3)


# ----------------------------------------------------------------------------- key frames


def _spec_frames(spec: str, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A key-frame spec -> (index, valid) `[T, K]` of the key-frame columns."""
    t = np.arange(frames)[:, None]
    if spec == "anchor":
        return np.zeros((frames, 1), np.int32), np.ones((frames, 1), bool)
    if spec == "anchor+previous":
        previous = np.maximum(t - 1, 0)
        index = np.concatenate([np.zeros_like(t), previous], axis=1).astype(np.int32)
        valid = np.concatenate([np.ones_like(t, bool), t - 1 >= 1], axis=1)  # no repeat of 0
        return index, valid
    head, _, value = spec.partition(":")
    if head == "stride":
        try:
            stride = int(value)
        except ValueError:
            stride = 0
        if stride < 1 or str(stride) != value.strip():
            raise ValueError(f"key_frames={spec!r}: the stride must be an int >= 1 "
                             f"('stride:2'), got {value!r}")
        chosen = np.arange(0, frames, stride, dtype=np.int32)
        return (np.broadcast_to(chosen, (frames, len(chosen))),
                np.ones((frames, len(chosen)), bool))
    raise ValueError(f"key_frames={spec!r} is not a key-frame spec; expected a list of frame "
                     f"indices or one of {', '.join(KEY_FRAME_SPECS)}")


def key_frame_columns(key_frames: KeyFrames, frames: int, batch: int) -> tuple[Array, Array]:
    """The key frames of every query frame: (index, valid) `[B or 1, T, K]` (int32, bool).

    Args:
      key_frames: a spec (`'stride:s'`, `'anchor'`, `'anchor+previous'`), a list of distinct
        frame indices (`[0, 3]`; `[]` means none), or an int array `[K]` or `[B, K]` (per
        example; a traced array is not range-checked).
      frames: T.
      batch: B.
    """
    if isinstance(key_frames, str):
        index, valid = _spec_frames(key_frames, frames)
        return jnp.asarray(index)[None], jnp.asarray(valid)[None]
    if isinstance(key_frames, (list, tuple)):
        for f in key_frames:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
                raise ValueError(f"key_frames must hold int frame indices, got {key_frames!r}")
        key_frames = np.asarray(key_frames, np.int32).reshape(-1)
        if len(set(key_frames.tolist())) != len(key_frames):
            raise ValueError(f"key_frames must be distinct, got {key_frames.tolist()}")
    shape = tuple(jnp.shape(key_frames))
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != batch):
        raise ValueError(f"key_frames must be a list of frame indices, an array [K] or "
                         f"[batch={batch}, K], or a spec; got shape {shape}")
    if not jnp.issubdtype(jnp.asarray(key_frames).dtype, jnp.integer):
        raise ValueError(f"key_frames must hold int frame indices, got dtype "
                         f"{jnp.asarray(key_frames).dtype}")
    try:
        concrete = np.asarray(key_frames)
    except jax.errors.TracerArrayConversionError:  # traced (a learned choice): not checked
        concrete = None
    if concrete is not None and concrete.size:
        if concrete.min() < 0 or concrete.max() >= frames:
            raise ValueError(f"key_frames indices must be in [0, T) = [0, {frames}), got "
                             f"{concrete.tolist()}")
    index = jnp.asarray(key_frames, jnp.int32).reshape((shape[0] if len(shape) == 2 else 1, 1,
                                                        shape[-1]))
    index = jnp.broadcast_to(index, (index.shape[0], frames, shape[-1]))
    return index, jnp.ones(index.shape, bool)


def _keyframe_table(key_frames: KeyFrames, frames: int, batch: int, include_self: bool,
                    causal: bool) -> tuple[Array, Array]:
    """(index, valid) `[B or 1, T, C]`: the key-frame columns, then (with `include_self`) the
    query's own frame, valid unless it already is a valid key frame; causal drops later frames."""
    index, valid = key_frame_columns(key_frames, frames, batch)
    t = jnp.arange(frames)[None, :, None]
    if causal:
        valid = valid & (index <= t)
    if include_self:
        own = jnp.broadcast_to(t, index.shape[:2] + (1,)).astype(jnp.int32)
        repeated = jnp.any(valid & (index == t), axis=-1, keepdims=True)
        index = jnp.concatenate([index, own], axis=-1)
        valid = jnp.concatenate([valid, ~repeated], axis=-1)
    if index.shape[-1] == 0:
        raise ValueError("key_frames is empty and include_self=False: no query would have a key")
    return index, valid


def keyframe_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_frames: KeyFrames,
    include_self: bool = True,
    kv_scale: Array | None = None,
    frame_mask: Array | None = None,
    mask: Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Every frame's queries attend to the tokens of the key frames (and of their own frame).

    Args:
      q, k, v: `[B, T, S, N, H]`.
      key_frames: frame indices (a list, `[]` for none, or an int array `[K]` / `[B, K]`) or a
        spec: `'stride:s'` (frames 0, s, 2s, ...), `'anchor'` (frame 0), `'anchor+previous'`
        (frames 0 and t - 1 for query frame t, Tune-A-Video's sparse-causal attention).
      include_self: the queries of frame t also attend to frame t (once, if it is a key frame).
      kv_scale: `[B, K]`, one factor per key-frame column (for a spec: its K columns, e.g.
        anchor, previous) multiplying that frame's keys and values; the own-frame column is not
        scaled. The learned key-frame selector passes its scores through it.
      frame_mask: `[B, T]`, True = real frame; padded frames receive no weight.
      mask: must be None.
      causal: key frames later than the query's frame are dropped.
      scale, dropout_rate, dropout_rng: as `temporal_attention`.

    Returns:
      `[B, T, S, N, H]` in q's dtype.
    """
    check_video(q, k, v, mask, frame_mask)
    b, t, s, n, _ = q.shape
    index, valid = _keyframe_table(key_frames, t, b, include_self, causal)
    index, valid = (jnp.broadcast_to(x, (b,) + x.shape[1:]) for x in (index, valid))  # [B, T, C]
    columns = index.shape[-1]
    ks, vs = (jax.vmap(lambda x, i: x[i])(x, index) for x in (k, v))  # [B, T, C, S, N, H]
    if kv_scale is not None:
        n_key = columns - int(include_self)
        if tuple(jnp.shape(kv_scale)) != (b, n_key):
            raise ValueError(f"kv_scale must be [batch, key frames] = {(b, n_key)}, got shape "
                             f"{tuple(jnp.shape(kv_scale))}")
        factor = jnp.concatenate([kv_scale, jnp.ones((b, columns - n_key), kv_scale.dtype)], 1)
        factor = factor[:, None, :, None, None, None]
        ks, vs = (x * factor.astype(x.dtype) for x in (ks, vs))
    keys = _frame_keys(frame_mask, b, t)
    allowed = valid & jax.vmap(lambda m, i: m[i])(keys, index)  # [B, T, C]
    allowed = jnp.broadcast_to(allowed[..., None], (b, t, columns, s)).reshape(b * t, columns * s)
    ks, vs = (x.reshape(b * t, columns * s, n, x.shape[-1]) for x in (ks, vs))
    out = dense.attention(to_spatial(q), ks, vs, mask=dense.key_padding_pattern(allowed),
                          scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return from_spatial(out, b)


# ----------------------------------------------------------------------------- dense equivalents


def _token_pattern(frames_allowed: Array, tokens: int, heads: int, same_location: bool) -> Array:
    """Frame-level `[B, T, T']` (query frame, key frame) -> `[B, N, T*S, T*S]` over time-major
    tokens; with `same_location` only keys at the query's spatial index."""
    b, t, _ = frames_allowed.shape
    out = jnp.repeat(jnp.repeat(frames_allowed, tokens, axis=1), tokens, axis=2)
    if same_location:
        location = np.arange(t * tokens) % tokens
        out = out & jnp.asarray(location[:, None] == location[None, :])
    return jnp.broadcast_to(out[:, None], (b, heads, t * tokens, t * tokens))


def _frames_allowed(q: Array, frame_mask: Array | None, causal: bool, own_frame: bool) -> Array:
    """`[B, T, T']`: the key frame is real, and not later (causal) / the same (own_frame)."""
    b, t = q.shape[:2]
    out = jnp.broadcast_to(_frame_keys(frame_mask, b, t)[:, None, :], (b, t, t))
    order = np.arange(t)
    if causal:
        out = out & jnp.asarray(order[:, None] >= order[None, :])
    if own_frame:
        out = out & jnp.asarray(order[:, None] == order[None, :])
    return out


def temporal_pattern(q: Array, k: Array, *, frame_mask: Array | None = None,
                     causal: bool = False, **unused_options) -> Array:
    """Boolean `[B, N, T*S, T*S]`: the same spatial location, a real (earlier) frame."""
    allowed = _frames_allowed(q, frame_mask, causal, own_frame=False)
    return _token_pattern(allowed, q.shape[2], q.shape[3], same_location=True)


def spatial_pattern(q: Array, k: Array, *, frame_mask: Array | None = None,
                    causal: bool = False, **unused_options) -> Array:
    """Boolean `[B, N, T*S, T*S]`: the same, real frame."""
    _no_spatial_causal(causal)
    allowed = _frames_allowed(q, frame_mask, False, own_frame=True)
    return _token_pattern(allowed, q.shape[2], q.shape[3], same_location=False)


def joint_pattern(q: Array, k: Array, *, frame_mask: Array | None = None,
                  causal: bool = False, **unused_options) -> Array:
    """Boolean `[B, N, T*S, T*S]`: every token of a real (earlier) frame."""
    allowed = _frames_allowed(q, frame_mask, causal, own_frame=False)
    return _token_pattern(allowed, q.shape[2], q.shape[3], same_location=False)


def factorized_heads_pattern(q: Array, k: Array, *, temporal_heads: int | None = None,
                             frame_mask: Array | None = None, causal: bool = False,
                             **unused_options) -> Array:
    """Boolean `[B, N, T*S, T*S]`: the temporal pattern on the first `temporal_heads` heads, the
    spatial pattern on the others."""
    n = _temporal_heads(temporal_heads, q.shape[3])
    temporal = temporal_pattern(q, k, frame_mask=frame_mask, causal=causal)
    spatial = spatial_pattern(q, k, frame_mask=frame_mask)
    return jnp.concatenate([temporal[:, :n], spatial[:, n:]], axis=1)


def keyframe_pattern(q: Array, k: Array, *, key_frames: KeyFrames, include_self: bool = True,
                     frame_mask: Array | None = None, causal: bool = False,
                     **unused_options) -> Array:
    """Boolean `[B, N, T*S, T*S]`: every token of the query frame's real key frames (and of its
    own frame with `include_self`)."""
    b, t = q.shape[:2]
    index, valid = _keyframe_table(key_frames, t, b, include_self, causal)
    hits = valid[..., None] & (index[..., None] == jnp.arange(t))  # [B or 1, T, C, T']
    allowed = jnp.any(hits, axis=2) & _frame_keys(frame_mask, b, t)[:, None, :]
    return _token_pattern(allowed, q.shape[2], q.shape[3], same_location=False)
