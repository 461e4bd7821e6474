"""A video transformer with the space-time attention blocks of TimeSformer and ViViT.

    clip [B, T, H, W, C], frame_mask [B, T]
    -> tubelets t x P x P (layers/patch.py `TubeletEmbed`)         [B, T', S, D], T' = T / t
    -> [CLS] per frame (pool 'cls': S + 1 tokens a frame) + learned space and time positions
    -> `num_layers` pre-LN blocks of `block` -> LayerNorm
    -> pool over the real frames -> Dense                                   [B, num_classes]

Blocks (`block`), each a pre-LN residual attention sublayer per attention, then one MLP:
- 'joint': attention over all T'*S tokens (ViViT model 1);
- 'divided': temporal, then spatial attention, each with its own LayerNorm and residual, one MLP
  after (TimeSformer's divided space-time attention);
- 'factorized_heads': half the heads temporal, half spatial in one attention (ViViT model 4);
- 'keyframe': key-frame attention to `key_frames` ('stride:s', 'anchor', 'anchor+previous', or
  'learned:k', chosen per clip by `layers/video.py`'s `KeyFrameSelector`), with its own frame
  when `include_self`;
- 'factorized_encoder': ViViT model 2: `num_layers` spatial blocks on every frame, then each frame
  is one token (its [CLS], or the mean of its tokens) and `temporal_layers` temporal blocks run
  over the T' frame tokens.
Pooling: 'mean' averages every token of the real frames (the frame tokens for
'factorized_encoder'); 'cls' averages the per-frame [CLS] outputs over the real frames. A tubelet
is real when any of its frames is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import video
from attnx.layers.feed_forward import FeedForward, dropout
from attnx.layers.norm import LayerNorm
from attnx.layers.patch import TubeletEmbed
from attnx.layers.pool import masked_mean
from attnx.layers.video import VideoSelfAttention, learned_key_frames

Array = jax.Array

BLOCKS = ("joint", "divided", "factorized_heads", "factorized_encoder", "keyframe")


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """`model.*` fields of the video transformer; `clip_shape` (T, H, W, C) and `num_classes`
    come from the data.

    Attributes:
      block: one of BLOCKS.
      patch_size: P (must divide H and W).
      tubelet_frames: t, frames per tubelet (must divide T).
      d_model, num_heads, num_layers, d_ff: sizes (GELU MLP).
      temporal_layers: 'factorized_encoder' only: blocks of the temporal encoder.
      key_frames: 'keyframe' only: a spec of `attention/video.py` or 'learned:k'.
      include_self: 'keyframe' only: a frame's queries also see their own frame.
      pool: 'mean' or 'cls'.
      dropout_rate: dropout on embeddings and residual branches.
    """

    num_classes: int
    clip_shape: tuple[int, int, int, int]
    block: str = "divided"
    patch_size: int = 4
    tubelet_frames: int = 1
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 128
    temporal_layers: int = 1
    key_frames: str = "stride:2"
    include_self: bool = True
    pool: str = "mean"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self):
        if len(self.clip_shape) != 4:
            raise ValueError(f"clip_shape must be (T, H, W, C), got {self.clip_shape}")
        object.__setattr__(self, "clip_shape", tuple(self.clip_shape))
        if self.block not in BLOCKS:
            raise ValueError(f"model.block must be one of {BLOCKS}, got {self.block!r}")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"model.pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide "
                             f"model.d_model={self.d_model}")

    @property
    def frames(self) -> int:
        """T', the tubelets along time."""
        return self.clip_shape[0] // self.tubelet_frames

    @property
    def frame_tokens(self) -> int:
        """Tokens a frame: (H/P) * (W/P), + 1 with a [CLS]."""
        _, h, w, _ = self.clip_shape
        return (h // self.patch_size) * (w // self.patch_size) + (self.pool == "cls")

    def check_sizes(self) -> None:
        """ValueError naming the field whose size does not fit the clips."""
        t, h, w, _ = self.clip_shape
        if self.tubelet_frames < 1 or t % self.tubelet_frames:
            raise ValueError(f"model.tubelet_frames={self.tubelet_frames} must divide the "
                             f"clips' {t} frames")
        if self.patch_size < 1 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"model.patch_size={self.patch_size} must divide the frames' "
                             f"height {h} and width {w}")
        if self.block == "keyframe":
            learned = learned_key_frames(self.key_frames)
            if learned is not None and learned > self.frames:
                raise ValueError(f"model.key_frames={self.key_frames!r}: learned={learned} key "
                                 f"frames exceed the clips' T={self.frames} frames (tubelets)")
            if learned is None:
                video.key_frame_columns(self.key_frames, self.frames, 1)

    def attentions(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """(mechanism, options) of each attention sublayer of one block ('factorized_encoder':
        of its spatial blocks)."""
        if self.block == "divided":
            return (("temporal", {}), ("spatial", {}))
        if self.block == "keyframe":
            return (("keyframe", dict(key_frames=self.key_frames,
                                      include_self=self.include_self)),)
        if self.block == "factorized_encoder":
            return (("spatial", {}),)
        return ((self.block, {}),)  # 'joint' and 'factorized_heads' are mechanisms of their own


class Block(nnx.Module):
    """`[B, T, S, D] -> [B, T, S, D]`: pre-LN residual attention sublayers, then a pre-LN MLP."""

    def __init__(self, cfg: VideoConfig, attentions: tuple[tuple[str, dict[str, Any]], ...], *,
                 rngs: nnx.Rngs):
        d = cfg.d_model
        self.dropout_rate = cfg.dropout_rate
        self.norms = nnx.List([LayerNorm(d, rngs=rngs) for _ in attentions])
        self.attentions = nnx.List([
            VideoSelfAttention(d, cfg.num_heads, mechanism, options=options, dtype=cfg.dtype,
                               rngs=rngs)
            for mechanism, options in attentions])
        self.mlp_norm = LayerNorm(d, rngs=rngs)
        self.mlp = FeedForward(d, cfg.d_ff, activation="gelu", dropout_rate=cfg.dropout_rate,
                               dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x: Array, frame_mask: Array, *, rng: Array | None = None) -> Array:
        rngs = [None] * (2 * len(self.attentions) + 2) if rng is None else list(
            jax.random.split(rng, 2 * len(self.attentions) + 2))
        for i, (norm, attention) in enumerate(zip(self.norms, self.attentions)):
            y = attention(norm(x), frame_mask=frame_mask, rng=rngs[2 * i])
            x = x + dropout(y, self.dropout_rate, rngs[2 * i + 1])
        y = self.mlp(self.mlp_norm(x), rng=rngs[-2])
        return x + dropout(y, self.dropout_rate, rngs[-1])


class VideoTransformer(nnx.Module):
    """clip `[B, T, H, W, C]` float, frame_mask `[B, T]` -> logits `[B, num_classes]` (float32)."""

    def __init__(self, cfg: VideoConfig, *, rngs: nnx.Rngs):
        cfg.check_sizes()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = TubeletEmbed(cfg.clip_shape[-1], d, cfg.patch_size,
                                  tubelet_frames=cfg.tubelet_frames, dtype=cfg.dtype, rngs=rngs)
        init = nnx.initializers.normal(0.02)
        self.cls = nnx.Param(init(rngs.params(), (d,))) if cfg.pool == "cls" else None
        self.time_positions = nnx.Param(init(rngs.params(), (cfg.frames, 1, d)))
        self.space_positions = nnx.Param(init(rngs.params(), (1, cfg.frame_tokens, d)))
        self.blocks = nnx.List([Block(cfg, cfg.attentions(), rngs=rngs)
                                for _ in range(cfg.num_layers)])
        temporal = cfg.temporal_layers if cfg.block == "factorized_encoder" else 0
        self.temporal_blocks = nnx.List([Block(cfg, (("temporal", {}),), rngs=rngs)
                                         for _ in range(temporal)])
        self.norm = LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, cfg.num_classes, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, clip: Array, frame_mask: Array | None = None, *,
                 rng: Array | None = None) -> Array:
        cfg = self.cfg
        if clip.ndim != 5 or clip.shape[1:] != cfg.clip_shape:
            raise ValueError(f"clip must be [batch, *{cfg.clip_shape}] (T, H, W, C), got shape "
                             f"{clip.shape}")
        b, t = clip.shape[:2]
        if frame_mask is None:
            frame_mask = jnp.ones((b, t), bool)
        if tuple(frame_mask.shape) != (b, t):
            raise ValueError(f"frame_mask must be [batch, frames] = {(b, t)}, got shape "
                             f"{tuple(frame_mask.shape)}")
        tubes = frame_mask.astype(bool).reshape(b, cfg.frames, cfg.tubelet_frames).any(-1)
        rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
        x = self.embed(clip.astype(cfg.dtype))  # [B, T', S, D]
        if self.cls is not None:
            cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (b, cfg.frames, 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=2)
        x = x + (self.time_positions[...] + self.space_positions[...]).astype(x.dtype)[None]
        x = dropout(x, cfg.dropout_rate, rngs[0])
        for i, block in enumerate(self.blocks):
            x = block(x, tubes, rng=None if rng is None else jax.random.fold_in(rngs[1], i))
        if self.temporal_blocks:  # one token per frame: its [CLS] or the mean of its tokens
            x = x[:, :, :1] if self.cls is not None else x.mean(axis=2, keepdims=True)
            for i, block in enumerate(self.temporal_blocks):
                x = block(x, tubes, rng=None if rng is None else jax.random.fold_in(rngs[2], i))
        x = self.norm(x)
        pooled = masked_mean(x[:, :, 0] if self.cls is not None else x, tubes)
        return self.head(pooled).astype(jnp.float32)
