"""The Transformer of "Attention Is All You Need": decoder-only LM, encoder classifier, encoder-decoder.

Every attention layer is a `MultiHeadAttention` whose mechanism comes from the config, so the same
model runs with dense, flash, local, LSH or Longformer attention. Norm placement is configurable:
'pre' (the default, stable for deep stacks) or 'post' (the paper).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import registry
from attnx.layers.attention import MultiHeadAttention, init_cache
from attnx.layers.feed_forward import FeedForward, dropout
from attnx.layers.norm import LayerNorm
from attnx.layers.pool import masked_mean
from attnx.layers.position import make_position

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and choices of a Transformer; `model.*` fields of an experiment config."""

    vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int | None = None  # encoder-decoder only; default num_layers
    d_ff: int = 1024
    max_len: int = 2048
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    attention: str = "dense"
    attention_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cross_attention: str = "dense"
    positional: str = "sinusoidal"
    norm: str = "pre"
    activation: str = "relu"
    dtype: Any = jnp.float32
    num_classes: int | None = None  # classifier only
    pool: str = "cls"  # classifier only: 'cls' or 'mean'

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide "
                             f"model.d_model={self.d_model}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', got {self.norm!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"model.pool must be 'cls' or 'mean', got {self.pool!r}")
        registry.get(self.attention)
        registry.get(self.cross_attention)


def _layer_rng(rng: Array | None, index: int) -> Array | None:
    return None if rng is None else jax.random.fold_in(rng, index)


def _split(rng: Array | None, n: int) -> list[Array | None]:
    return [None] * n if rng is None else list(jax.random.split(rng, n))


class Block(nnx.Module):
    """Self-attention (+ optional cross-attention) + feed-forward, each a residual sublayer."""

    def __init__(self, cfg: TransformerConfig, *, cross_attention: bool = False,
                 mechanism: str | None = None, rngs: nnx.Rngs):
        d = cfg.d_model
        self.norm_placement = cfg.norm
        self.dropout_rate = cfg.dropout_rate
        self.self_attention = MultiHeadAttention(
            d, cfg.num_heads, mechanism=mechanism or cfg.attention, options=cfg.attention_options,
            attention_dropout=cfg.attention_dropout, dtype=cfg.dtype, rngs=rngs)
        self.self_attention_norm = LayerNorm(d, rngs=rngs)
        if cross_attention:
            self.cross_attention = MultiHeadAttention(
                d, cfg.num_heads, mechanism=cfg.cross_attention,
                attention_dropout=cfg.attention_dropout, dtype=cfg.dtype, rngs=rngs)
            self.cross_attention_norm = LayerNorm(d, rngs=rngs)
        else:
            self.cross_attention = None
        self.feed_forward = FeedForward(d, cfg.d_ff, activation=cfg.activation,
                                        dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, rngs=rngs)
        self.feed_forward_norm = LayerNorm(d, rngs=rngs)

    def _residual(self, x: Array, norm: LayerNorm, sublayer, rng: Array | None) -> Array:
        """Pre-LN: x + drop(f(LN x)); post-LN: LN(x + drop(f(x)))."""
        if self.norm_placement == "pre":
            return x + dropout(sublayer(norm(x)), self.dropout_rate, rng)
        return norm(x + dropout(sublayer(x), self.dropout_rate, rng))

    def __call__(self, x: Array, *, mask: Array | None = None, causal: bool = False,
                 global_mask: Array | None = None, memory: Array | None = None,
                 memory_mask: Array | None = None, rng: Array | None = None,
                 cache: dict[str, Array] | None = None):
        """x `[B, T, D]`, memory `[B, S, D]` (cross-attention input) -> `[B, T, D]` (+ cache)."""
        r_attn, r_drop1, r_cross, r_drop2, r_ff, r_drop3 = _split(rng, 6)
        new_cache = None

        def self_attend(h):
            nonlocal new_cache
            if cache is None:
                return self.self_attention(h, mask=mask, causal=causal, global_mask=global_mask,
                                           rng=r_attn)
            out, new_cache = self.self_attention(h, mask=mask, rng=r_attn, cache=cache)
            return out

        x = self._residual(x, self.self_attention_norm, self_attend, r_drop1)
        if self.cross_attention is not None:
            x = self._residual(
                x, self.cross_attention_norm,
                lambda h: self.cross_attention(h, memory, mask=memory_mask, rng=r_cross), r_drop2)
        x = self._residual(x, self.feed_forward_norm,
                           lambda h: self.feed_forward(h, rng=r_ff), r_drop3)
        return x if cache is None else (x, new_cache)


class Embedding(nnx.Module):
    """Token embedding scaled by sqrt(D), plus positions, plus dropout: ids `[B, T]` -> `[B, T, D]`."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.scale = cfg.d_model**0.5
        self.dtype = cfg.dtype
        self.dropout_rate = cfg.dropout_rate
        self.tokens = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.position = make_position(cfg.positional, cfg.max_len, cfg.d_model, rngs=rngs)

    def __call__(self, ids: Array, *, rng: Array | None = None, offset: Array | int = 0) -> Array:
        x = self.tokens(ids).astype(self.dtype) * self.scale
        return dropout(self.position(x, offset), self.dropout_rate, rng)


class Stack(nnx.Module):
    """`num_layers` blocks and, for pre-LN, a final LayerNorm."""

    def __init__(self, cfg: TransformerConfig, num_layers: int, *, cross_attention: bool = False,
                 mechanism: str | None = None, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            Block(cfg, cross_attention=cross_attention, mechanism=mechanism, rngs=rngs)
            for _ in range(num_layers)])
        self.final_norm = LayerNorm(cfg.d_model, rngs=rngs) if cfg.norm == "pre" else None

    def __call__(self, x: Array, *, rng: Array | None = None, caches=None, **kwargs):
        new_caches = []
        for i, block in enumerate(self.blocks):
            if caches is None:
                x = block(x, rng=_layer_rng(rng, i), **kwargs)
            else:
                x, c = block(x, rng=_layer_rng(rng, i), cache=caches[i], **kwargs)
                new_caches.append(c)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x if caches is None else (x, new_caches)

    def attention_maps(self, x: Array, **kwargs) -> list[Array]:
        """Each block's self-attention weights `[B, N, T, T]` (the dense equivalent of its pattern)."""
        maps = []
        for block in self.blocks:
            h = block.self_attention_norm(x) if block.norm_placement == "pre" else x
            maps.append(block.self_attention.weights(
                h, mask=kwargs.get("mask"), causal=kwargs.get("causal", False),
                global_mask=kwargs.get("global_mask")))
            x = block(x, **kwargs)
        return maps


class DecoderLM(nnx.Module):
    """Decoder-only language model: ids `[B, T]` -> next-token logits `[B, T, V]` (float32)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs=rngs)
        self.decoder = Stack(cfg, cfg.num_layers, rngs=rngs)
        self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, ids: Array, *, rng: Array | None = None) -> Array:
        r_embed, r_stack = _split(rng, 2)
        x = self.embed(ids, rng=r_embed)
        x = self.decoder(x, causal=True, rng=r_stack)
        return self.lm_head(x).astype(jnp.float32)

    def attention_maps(self, ids: Array) -> list[Array]:
        """Per-layer attention weights `[B, N, T, T]` for TensorBoard images."""
        return self.decoder.attention_maps(self.embed(ids), causal=True)

    @property
    def supports_decoding(self) -> bool:
        """The mechanism has a key/value cache (dense attention)."""
        return registry.get(self.cfg.attention).supports_cache

    def prefill(self, ids: Array, max_len: int) -> tuple[Array, list[dict[str, Array]]]:
        """The prompt ids `[B, P]` into empty caches of `max_len` positions: (logits, caches)."""
        return self.decode(ids, self.init_caches(ids.shape[0], max_len))

    def init_caches(self, batch: int, max_len: int | None = None) -> list[dict[str, Array]]:
        """Empty key/value caches for incremental decoding (dense attention only)."""
        max_len = max_len or self.cfg.max_len
        head_dim = self.cfg.d_model // self.cfg.num_heads
        return [init_cache(batch, max_len, self.cfg.num_heads, head_dim, self.cfg.dtype)
                for _ in range(self.cfg.num_layers)]

    def decode(self, ids: Array, caches: list[dict[str, Array]]):
        """Feed `ids [B, t]` after the cached prefix: -> (logits `[B, t, V]`, new caches)."""
        x = self.embed(ids, offset=caches[0]["index"])
        x, caches = self.decoder(x, caches=caches)
        return self.lm_head(x).astype(jnp.float32), caches


class EncoderClassifier(nnx.Module):
    """Encoder with a learned [CLS] vector prepended: ids `[B, T]`, mask `[B, T]` -> logits `[B, C]`.

    The [CLS] position is marked global when the mechanism has global tokens (Longformer).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        if not cfg.num_classes:
            raise ValueError("model.num_classes must be set for a classifier")
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs=rngs)
        self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, cfg.d_model)))
        self.encoder = Stack(cfg, cfg.num_layers, rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, cfg.num_classes, rngs=rngs)

    def _embed_with_cls(self, ids: Array, mask: Array, rng: Array | None):
        """-> (x `[B, 1 + T, D]`, keyword arguments of the encoder: mask and global tokens)."""
        b = ids.shape[0]
        tokens = self.embed.tokens(ids).astype(self.cfg.dtype) * self.embed.scale
        cls = jnp.broadcast_to(self.cls[...].astype(tokens.dtype), (b, 1, self.cfg.d_model))
        x = self.embed.position(jnp.concatenate([cls, tokens], axis=1))
        x = dropout(x, self.cfg.dropout_rate, rng)
        mask = jnp.concatenate([jnp.ones((b, 1), bool), mask.astype(bool)], axis=1)
        kwargs = {"mask": mask}
        if registry.get(self.cfg.attention).global_projections:
            kwargs["global_mask"] = jnp.zeros_like(mask).at[:, 0].set(True)
        return x, kwargs

    def attention_maps(self, ids: Array, mask: Array) -> list[Array]:
        """Per-layer attention weights `[B, N, 1 + T, 1 + T]` ([CLS] first) for images."""
        x, kwargs = self._embed_with_cls(ids, mask, None)
        return self.encoder.attention_maps(x, **kwargs)

    def __call__(self, ids: Array, mask: Array, *, rng: Array | None = None) -> Array:
        r_embed, r_stack = _split(rng, 2)
        x, kwargs = self._embed_with_cls(ids, mask, r_embed)
        mask = kwargs["mask"]
        x = self.encoder(x, rng=r_stack, **kwargs)
        if self.cfg.pool == "cls":
            pooled = x[:, 0]
        else:
            pooled = masked_mean(x, mask)
        return self.head(pooled).astype(jnp.float32)


class EncoderDecoder(nnx.Module):
    """Encoder-decoder with shared embeddings: (inputs `[B, S]`, decoder inputs `[B, T]`) -> `[B, T, V]`."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs=rngs)
        self.encoder = Stack(cfg, cfg.num_layers, rngs=rngs)
        self.decoder = Stack(cfg, cfg.num_decoder_layers or cfg.num_layers, cross_attention=True,
                             rngs=rngs)
        self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, dtype=cfg.dtype, rngs=rngs)

    def encode(self, inputs: Array, inputs_mask: Array, *, rng: Array | None = None) -> Array:
        """inputs `[B, S]`, inputs_mask `[B, S]` -> memory `[B, S, D]`."""
        r_embed, r_stack = _split(rng, 2)
        return self.encoder(self.embed(inputs, rng=r_embed), mask=inputs_mask, rng=r_stack)

    def decode(self, decoder_inputs: Array, memory: Array, inputs_mask: Array, *,
               rng: Array | None = None) -> Array:
        """decoder_inputs `[B, T]`, memory `[B, S, D]` -> logits `[B, T, V]` (float32)."""
        r_embed, r_stack = _split(rng, 2)
        x = self.embed(decoder_inputs, rng=r_embed)
        x = self.decoder(x, causal=True, memory=memory, memory_mask=inputs_mask, rng=r_stack)
        return self.lm_head(x).astype(jnp.float32)

    def attention_maps(self, inputs: Array, inputs_mask: Array) -> list[Array]:
        """The encoder's per-layer self-attention weights `[B, N, S, S]` for images."""
        return self.encoder.attention_maps(self.embed(inputs), mask=inputs_mask)

    def __call__(self, inputs: Array, inputs_mask: Array, decoder_inputs: Array, *,
                 rng: Array | None = None) -> Array:
        r_enc, r_dec = _split(rng, 2)
        memory = self.encode(inputs, inputs_mask, rng=r_enc)
        return self.decode(decoder_inputs, memory, inputs_mask, rng=r_dec)
