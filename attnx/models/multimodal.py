"""A two-modality classifier: an image encoder and a text encoder joined by a cross-modality block.

    image [B, H, W, C] -> P x P patches (layers/patch.py) + learned positions -> pre-LN encoder
        (`model.attention`, any registered sequence mechanism)          -> image tokens [B, P, D]
    question [B, T] ids, mask [B, T] -> embedding + learned positions -> pre-LN encoder
                                                                        -> text tokens [B, T, D]
    -> `model.fusion_layers` blocks of `model.block` (attention `model.cross_attention`):
       'cross'     text queries attend to the image (CrossAttention + feed-forward, pre-LN);
                   head on the masked mean of the text tokens
       'co'        co-attention, each stream attends to the other (CoAttention + a feed-forward
                   per stream; `model.shared` for LXMERT's shared module); head on the masked
                   text mean and the image mean, concatenated
       'gated'     Flamingo's gated cross-attention, text attending to the image as its one media
                   item (GatedCrossAttention, identity at initialisation); head on the text mean
       'perceiver' `model.num_latents` learned latents attend to both modalities' tokens (each
                   with a modality embedding; PerceiverResampler); head on the latents' mean
       'text_only', 'image_only': the single-modality baselines, no fusion; head on the mean
                   of that modality's tokens
    -> LayerNorm -> Dense [B, num_classes]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import cross
from attnx.layers.cross import CoAttention, CrossAttention, GatedCrossAttention, PerceiverResampler
from attnx.layers.feed_forward import FeedForward
from attnx.layers.norm import LayerNorm
from attnx.layers.patch import PatchEmbed
from attnx.layers.pool import masked_mean
from attnx.models.transformer import Stack, TransformerConfig

Array = jax.Array

BLOCKS = ("cross", "co", "gated", "perceiver", "text_only", "image_only")
NAMES = ("text", "image")


@dataclasses.dataclass(frozen=True)
class MultimodalConfig:
    """`model.*` fields; `vocab_size`, `num_classes` and `image_shape` come from the data.

    Attributes:
      block: one of BLOCKS.
      patch_size: P (divides the image's height and width).
      d_model, num_heads, d_ff: widths of every layer.
      image_layers, text_layers: self-attention layers of each encoder.
      fusion_layers: cross-modality blocks (unused by the baselines).
      max_len: the longest question (the text positions' table).
      attention, attention_options: the encoders' registry mechanism and its options.
      cross_attention, cross_attention_options: the fusion blocks' mechanism (one with
        `supports_cross_length`: dense, flash) and its options.
      shared: 'co' only: one cross-attention module for both directions (LXMERT).
      num_latents: 'perceiver' only.
    """

    num_classes: int
    vocab_size: int
    image_shape: tuple[int, int, int]
    block: str = "cross"
    patch_size: int = 4
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    image_layers: int = 1
    text_layers: int = 1
    fusion_layers: int = 1
    max_len: int = 16
    attention: str = "dense"
    attention_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cross_attention: str = "dense"
    cross_attention_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    shared: bool = False
    num_latents: int = 8
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"model.block must be one of {BLOCKS}, got {self.block!r}")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape}")
        object.__setattr__(self, "image_shape", tuple(self.image_shape))
        if self.d_model % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide "
                             f"model.d_model={self.d_model}")
        cross.check_mechanism(self.cross_attention)
        if self.shared and self.block != "co":
            raise ValueError(f"model.shared is co-attention's option; model.block={self.block!r}")

    @property
    def num_patches(self) -> int:
        h, w, _ = self.image_shape
        return (h // self.patch_size) * (w // self.patch_size)

    def encoder_config(self) -> TransformerConfig:
        """Both encoders' settings (pre-LN, GELU feed-forward)."""
        return TransformerConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, num_heads=self.num_heads,
            d_ff=self.d_ff, max_len=max(self.max_len, self.num_patches),
            attention=self.attention, attention_options=self.attention_options,
            activation="gelu", dtype=self.dtype)


class _PreLNFeedForward(nnx.Module):
    """x + FFW(LN x), `[B, T, D]`."""

    def __init__(self, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.d_model, rngs=rngs)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, activation="gelu", dtype=cfg.dtype,
                              rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return x + self.ff(self.norm(x))


class _CrossBlock(nnx.Module):
    """text + XAttn(LN text, image), then the feed-forward: `[B, T, D]`."""

    def __init__(self, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.d_model, rngs=rngs)
        self.attention = CrossAttention(cfg.d_model, cfg.d_model, cfg.num_heads,
                                        mechanism=cfg.cross_attention,
                                        options=cfg.cross_attention_options, names=NAMES,
                                        dtype=cfg.dtype, rngs=rngs)
        self.feed_forward = _PreLNFeedForward(cfg, rngs=rngs)

    def __call__(self, text: Array, image: Array, text_mask: Array) -> Array:
        return self.feed_forward(text + self.attention(self.norm(text), image, q_mask=text_mask))


class _CoBlock(nnx.Module):
    """Co-attention, then a feed-forward per stream: (text, image) -> (text', image')."""

    def __init__(self, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        self.attention = CoAttention(cfg.d_model, cfg.d_model, cfg.num_heads, shared=cfg.shared,
                                     mechanism=cfg.cross_attention,
                                     options=cfg.cross_attention_options, names=NAMES,
                                     dtype=cfg.dtype, rngs=rngs)
        self.text_feed_forward = _PreLNFeedForward(cfg, rngs=rngs)
        self.image_feed_forward = _PreLNFeedForward(cfg, rngs=rngs)

    def __call__(self, text: Array, image: Array, text_mask: Array) -> tuple[Array, Array]:
        text, image = self.attention(text, image, a_mask=text_mask)
        return self.text_feed_forward(text), self.image_feed_forward(image)


class MultimodalClassifier(nnx.Module):
    """(image `[B, H, W, C]` float, question `[B, T]` int, question_mask `[B, T]` bool)
    -> logits `[B, num_classes]` (float32)."""

    def __init__(self, cfg: MultimodalConfig, *, rngs: nnx.Rngs):
        h, w, _ = cfg.image_shape
        if cfg.patch_size < 1 or h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"model.patch_size={cfg.patch_size} must divide the image's "
                             f"height {h} and width {w}")
        self.cfg = cfg
        d, init = cfg.d_model, nnx.initializers.normal(0.02)
        encoder = cfg.encoder_config()
        pooled = d
        if cfg.block != "text_only":
            self.patches = PatchEmbed(cfg.image_shape[-1], d, cfg.patch_size, dtype=cfg.dtype,
                                      rngs=rngs)
            self.image_positions = nnx.Param(init(rngs.params(), (1, cfg.num_patches, d)))
            self.image_encoder = Stack(encoder, cfg.image_layers, rngs=rngs)
        if cfg.block != "image_only":
            self.tokens = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
            self.text_positions = nnx.Param(init(rngs.params(), (1, cfg.max_len, d)))
            self.text_encoder = Stack(encoder, cfg.text_layers, rngs=rngs)
        n = cfg.fusion_layers
        if cfg.block == "cross":
            self.fusion = nnx.List([_CrossBlock(cfg, rngs=rngs) for _ in range(n)])
        elif cfg.block == "co":
            self.fusion = nnx.List([_CoBlock(cfg, rngs=rngs) for _ in range(n)])
            pooled = 2 * d
        elif cfg.block == "gated":
            self.fusion = nnx.List([
                GatedCrossAttention(d, d, cfg.num_heads, d_ff=cfg.d_ff,
                                    mechanism=cfg.cross_attention,
                                    options=cfg.cross_attention_options, names=NAMES,
                                    dtype=cfg.dtype, rngs=rngs)
                for _ in range(n)])
        elif cfg.block == "perceiver":
            self.modality = nnx.Param(init(rngs.params(), (2, d)))
            self.resampler = PerceiverResampler(
                d, d, cfg.num_latents, cfg.num_heads, d_ff=cfg.d_ff, num_layers=n,
                mechanism=cfg.cross_attention, options=cfg.cross_attention_options,
                name="image and text", dtype=cfg.dtype, rngs=rngs)
        self.final_norm = LayerNorm(pooled, rngs=rngs)
        self.head = nnx.Linear(pooled, cfg.num_classes, dtype=cfg.dtype, rngs=rngs)

    def _encode_image(self, image: Array) -> Array:
        """`[B, H, W, C]` -> image tokens `[B, P, D]`."""
        if image.ndim != 4 or image.shape[1:] != self.cfg.image_shape:
            raise ValueError(f"image must be [batch, *{self.cfg.image_shape}] (H, W, C), got "
                             f"shape {image.shape}")
        x = PatchEmbed.tokens(self.patches(image.astype(self.cfg.dtype)))
        return self.image_encoder(x + self.image_positions[...].astype(x.dtype))

    def _encode_text(self, question: Array, mask: Array) -> Array:
        """`[B, T]` ids and mask -> text tokens `[B, T, D]`."""
        if question.ndim != 2 or question.shape[1] > self.cfg.max_len:
            raise ValueError(f"question must be [batch, length] with length <= model.max_len="
                             f"{self.cfg.max_len}, got shape {question.shape}")
        if mask.shape != question.shape:
            raise ValueError(f"question_mask must be the question's shape {question.shape}, got "
                             f"{mask.shape}")
        x = self.tokens(question).astype(self.cfg.dtype) * self.cfg.d_model**0.5
        x = x + self.text_positions[:, : question.shape[1]].astype(x.dtype)
        return self.text_encoder(x, mask=mask)

    def __call__(self, image: Array, question: Array, question_mask: Array, *,
                 rng: Array | None = None) -> Array:
        del rng  # No dropout: nothing random in this model.
        block = self.cfg.block
        text = None if block == "image_only" else self._encode_text(question, question_mask)
        img = None if block == "text_only" else self._encode_image(image)
        if block == "text_only":
            pooled = masked_mean(text, question_mask)
        elif block == "image_only":
            pooled = img.mean(1)
        elif block == "cross":
            for layer in self.fusion:
                text = layer(text, img, question_mask)
            pooled = masked_mean(text, question_mask)
        elif block == "co":
            for layer in self.fusion:
                text, img = layer(text, img, question_mask)
            pooled = jnp.concatenate([masked_mean(text, question_mask), img.mean(1)], -1)
        elif block == "gated":
            for layer in self.fusion:
                text = layer(text, img, x_mask=question_mask)
            pooled = masked_mean(text, question_mask)
        else:  # perceiver
            modality = self.modality[...].astype(text.dtype)
            tokens = jnp.concatenate([text + modality[0], img + modality[1]], 1)
            mask = jnp.concatenate([question_mask, jnp.ones(img.shape[:2], bool)], 1)
            pooled = self.resampler(tokens, mask=mask).mean(1)
        return self.head(self.final_norm(pooled)).astype(jnp.float32)
