"""The Reformer language model (Kitaev et al., 2020), as in trax and HF transformers.

    ids [B, T] -> token embedding + axial positions -> X1 = X2 = embedded input
      -> reversible blocks: Y1 = X1 + Attn(LN X2), Y2 = X2 + FF(LN Y1)
      -> LayerNorm([Y1; Y2]) [B, T, 2D] -> logits [B, T, V]

Attention is causal; each block's mechanism comes from `attn_layers` (registry names, e.g.
`('local', 'lsh', 'local', 'lsh')`) with the options `lsh_options` / `local_options`. The
feed-forward runs in chunks of `ff_chunk_len` positions. The two residual streams are float32
whatever the compute dtype, so that the reversible backward pass reconstructs them accurately.

Evaluation (`rng=None`) may change LSH options, e.g. the number of hash rounds: `eval_lsh_options`
overrides `lsh_options` then. "Full" shared-QK attention (the duplication experiment's Full row)
is LSH attention with one round and one chunk covering the sequence (`n_hashes=1`,
`chunk_len >= T`, `chunks_before=chunks_after=0`): every query sees every earlier key, with the
same normalised keys and -1e5 self logit, so one set of parameters serves both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import registry
from attnx.layers.attention import MultiHeadAttention
from attnx.layers.axial import AxialPosition
from attnx.layers.feed_forward import ACTIVATIONS, ChunkedFeedForward, FeedForward, dropout
from attnx.layers.norm import LayerNorm
from attnx.layers.reversible import ReversibleBlock, ReversibleSequence

Array = jax.Array


def _default_lsh_options() -> dict[str, Any]:
    return registry.get("lsh").preset("reformer_lm")


def _default_local_options() -> dict[str, Any]:
    return registry.get("local").preset("reformer_lm")


@dataclasses.dataclass(frozen=True)
class ReformerConfig:
    """Sizes and choices of a Reformer LM; `model.*` fields of an experiment config.

    `attn_layers` gives one registry name per layer (its length is the depth). `head_dim` defaults
    to d_model // num_heads. `ff_chunk_len=None` runs the feed-forward unchunked. `reversible=False`
    differentiates the same stack by plain autodiff (for comparisons). `eval_lsh_options` overrides
    `lsh_options` when the model runs without a key (evaluation); None values override nothing.
    """

    vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    head_dim: int | None = None
    d_ff: int = 1024
    attn_layers: tuple[str, ...] = ("local", "lsh", "local", "lsh")
    lsh_options: Mapping[str, Any] = dataclasses.field(default_factory=_default_lsh_options)
    local_options: Mapping[str, Any] = dataclasses.field(default_factory=_default_local_options)
    eval_lsh_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    axial_shape: tuple[int, int] = (64, 64)
    axial_dims: tuple[int, int] = (64, 192)
    ff_chunk_len: int | None = None
    dropout_rate: float = 0.0
    attention_dropout: float = 0.0
    activation: str = "relu"
    reversible: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"model.num_heads={self.num_heads} must divide "
                             f"model.d_model={self.d_model} (or set model.head_dim)")
        if isinstance(self.attn_layers, str) or not self.attn_layers:
            raise ValueError("model.attn_layers must be a non-empty tuple of attention mechanism "
                             f"names, e.g. ('local', 'lsh'), got {self.attn_layers!r}")
        for name in self.attn_layers:
            registry.get(name)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.ff_chunk_len is not None and self.ff_chunk_len < 1:
            raise ValueError(f"model.ff_chunk_len must be >= 1 or None, got {self.ff_chunk_len}")
        unknown = sorted(set(self.eval_lsh_options) - set(self.lsh_options))
        if unknown:
            raise ValueError(f"model.eval_lsh_options has keys {unknown} that model.lsh_options "
                             f"does not set ({sorted(self.lsh_options)})")

    def options(self, mechanism: str) -> dict[str, Any]:
        """The keyword options of `mechanism` (LSH and local options; none for the others)."""
        return dict({"lsh": self.lsh_options, "local": self.local_options}.get(mechanism, {}))


class AttentionBranch(nnx.Module):
    """The f branch of a Reformer block: `x [B, T, D] -> dropout(Attn(LN x))`, causal."""

    def __init__(self, cfg: ReformerConfig, mechanism: str, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.d_model, rngs=rngs)
        self.attention = MultiHeadAttention(
            cfg.d_model, cfg.num_heads, head_dim=cfg.head_dim, mechanism=mechanism,
            options=cfg.options(mechanism), attention_dropout=cfg.attention_dropout,
            use_bias=False, dtype=cfg.dtype, rngs=rngs)
        self.eval_options = {k: v for k, v in cfg.eval_lsh_options.items()
                             if v is not None and mechanism == "lsh"}
        self.dropout_rate = cfg.dropout_rate

    def _evaluate(self, h: Array) -> Array:
        """Deterministic attention with `eval_options` overriding the layer's options."""
        attn = self.attention
        q, k, v = attn.project(h, h)
        kwargs = attn.mechanism_kwargs(mask=None, causal=True, rng=None, global_mask=None, x_q=h)
        kwargs.update(self.eval_options)
        out = attn.mechanism.fn(q, v, **kwargs)
        return attn.out(out.reshape(out.shape[:2] + (-1,)))

    def prefill(self, x: Array, max_len: int) -> tuple[Array, dict[str, Array]]:
        """Evaluation's attention over a prompt `x` `[B, P, D]`, and its decoding cache."""
        return self.attention.prefill(self.norm(x), max_len, options=self.eval_options)

    def decode_step(self, x: Array, cache: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        """One new token `x` `[B, 1, D]` after the cached ones (see `MultiHeadAttention`)."""
        return self.attention.decode_step(self.norm(x), cache, options=self.eval_options)

    def weights(self, x: Array) -> Array:
        """Evaluation's attention weights `[B, N, T, T]`: the dense equivalent of the pattern
        (LSH: the keys sharing a sorted chunk; local: the band of chunks)."""
        return self.attention.weights(self.norm(x), causal=True, options=self.eval_options)

    def __call__(self, x: Array, *, rng: Array | None = None) -> Array:
        h = self.norm(x)
        if rng is None:
            return self._evaluate(h) if self.eval_options else self.attention(h, causal=True)
        r_attn, r_drop = jax.random.split(rng)
        return dropout(self.attention(h, causal=True, rng=r_attn), self.dropout_rate, r_drop)


class FeedForwardBranch(nnx.Module):
    """The g branch of a Reformer block: `x [B, T, D] -> dropout(FF(LN x))`, chunked or not."""

    def __init__(self, cfg: ReformerConfig, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(cfg.d_model, rngs=rngs)
        kwargs = dict(activation=cfg.activation, dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
                      rngs=rngs)
        if cfg.ff_chunk_len is None:
            self.feed_forward = FeedForward(cfg.d_model, cfg.d_ff, **kwargs)
        else:
            self.feed_forward = ChunkedFeedForward(cfg.d_model, cfg.d_ff,
                                                   chunk_len=cfg.ff_chunk_len, **kwargs)
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x: Array, *, rng: Array | None = None) -> Array:
        r_ff, r_drop = (None, None) if rng is None else tuple(jax.random.split(rng))
        out = self.feed_forward(self.norm(x), rng=r_ff)
        return dropout(out, self.dropout_rate, r_drop)


class ReformerLM(nnx.Module):
    """Causal Reformer LM: ids `[B, T]` -> next-token logits `[B, T, V]` (float32).

    Training (`rng` given) needs T == prod(axial_shape); evaluation (`rng=None`) T <= it.
    """

    def __init__(self, cfg: ReformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tokens = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        # Positions start at the scale of the token embeddings (std 1/sqrt(D)).
        self.position = AxialPosition(cfg.axial_shape, cfg.axial_dims, cfg.d_model,
                                      init_std=cfg.d_model**-0.5, rngs=rngs)
        self.stack = ReversibleSequence(
            [ReversibleBlock(AttentionBranch(cfg, name, rngs=rngs),
                             FeedForwardBranch(cfg, rngs=rngs)) for name in cfg.attn_layers],
            reversible=cfg.reversible)
        self.final_norm = LayerNorm(2 * cfg.d_model, rngs=rngs)
        self.lm_head = nnx.Linear(2 * cfg.d_model, cfg.vocab_size, dtype=cfg.dtype, rngs=rngs)

    @property
    def supports_decoding(self) -> bool:
        """Every layer's mechanism decodes incrementally (local and LSH attention, dense)."""
        return all(block.f.attention.can_decode for block in self.stack.blocks)

    def _head(self, y1: Array, y2: Array) -> Array:
        h = self.final_norm(jnp.concatenate([y1, y2], axis=-1))
        return self.lm_head(h).astype(jnp.float32)

    def prefill(self, ids: Array, max_len: int) -> tuple[Array, list[dict[str, Array]]]:
        """The prompt ids `[B, P]` through evaluation's forward, keeping each layer's decoding
        cache of `max_len` positions: (logits `[B, P, V]`, caches). Then `decode`."""
        if ids.ndim != 2:
            raise ValueError(f"ids must be [batch, length], got shape {ids.shape}")
        if max_len > self.position.num_positions:
            raise ValueError(f"max_len={max_len} exceeds the {self.position.num_positions} "
                             f"positions of axial_shape={self.position.axial_shape}")
        x1 = x2 = self.position(self.tokens(ids).astype(jnp.float32), training=False)
        caches = []
        for block in self.stack.blocks:
            attended, cache = block.f.prefill(x2, max_len)
            y1 = x1 + attended
            x1, x2 = y1, x2 + block.g(y1)
            caches.append(cache)
        return self._head(x1, x2), caches

    def decode(self, ids: Array, caches: list[dict[str, Array]]
               ) -> tuple[Array, list[dict[str, Array]]]:
        """One token per row, ids `[B, 1]`, after the cached ones: (logits `[B, 1, V]`, new
        caches). Local layers equal the full forward; LSH layers follow HF's decoding rule
        (`attnx.attention.lsh.decode_step`)."""
        if ids.ndim != 2 or ids.shape[1] != 1:
            raise ValueError(f"decode takes one token per row, ids [batch, 1], got shape "
                             f"{ids.shape}; a prompt goes through prefill")
        index = caches[0]["index"]
        position = jax.lax.dynamic_slice_in_dim(
            self.position.encoding(self.position.num_positions), index, 1)
        x1 = x2 = self.tokens(ids).astype(jnp.float32) + position[None]
        new_caches = []
        for block, cache in zip(self.stack.blocks, caches):
            attended, cache = block.f.decode_step(x2, cache)
            y1 = x1 + attended
            x1, x2 = y1, x2 + block.g(y1)
            new_caches.append(cache)
        return self._head(x1, x2), new_caches

    def attention_maps(self, ids: Array) -> list[Array]:
        """Per-layer attention weights `[B, N, T, T]` of evaluation's forward, for images: LSH
        layers show the keys of each query's sorted chunks, local layers their band."""
        x1 = x2 = self.position(self.tokens(ids).astype(jnp.float32), training=False)
        maps = []
        for block in self.stack.blocks:
            maps.append(block.f.weights(x2))
            x1, x2 = block(x1, x2)
        return maps

    def __call__(self, ids: Array, *, rng: Array | None = None) -> Array:
        if ids.ndim != 2:
            raise ValueError(f"ids must be [batch, length], got shape {ids.shape}")
        r_embed, r_stack = (None, None) if rng is None else tuple(jax.random.split(rng))
        x = self.position(self.tokens(ids).astype(jnp.float32), training=rng is not None)
        x = dropout(x, self.cfg.dropout_rate, r_embed)
        y1, y2 = self.stack(x, x, rng=r_stack)
        return self._head(y1, y2)
