"""Cross-modality modules: cross-attention, co-attention, gated cross-attention, Perceiver latents.

Every module attends with `attnx.attention.cross.cross_attention` (any registered mechanism with
`supports_cross_length`) and owns its projections. Inputs are token features `[B, T, D]` of one
modality each, with padding masks `[B, T]` (True = real token). Sizes that do not fit the
projections fail with a ValueError naming the modality (`names`) and the argument.

- `CrossAttention`: queries from `x_q [B, Tq, Dq]`, keys/values from `x_kv [B, Tk, Dkv]`
  -> `[B, Tq, Dq]` (the Transformer decoder's cross-attention; parameter names as
  `MultiHeadAttention`'s, so on one sequence it is self-attention).
- `CoAttention`: two streams, each attending to the other (ViLBERT: a projection set per
  direction; `shared=True`: LXMERT's one cross-attention module for both directions).
- `GatedCrossAttention`: Flamingo's `x += tanh(alpha) * XAttn(LN x, media)`,
  `x += tanh(beta) * FFW(LN x)`, alpha = beta = 0 at initialisation (the block starts as the
  identity); `only_immediate_media`: a text token sees only the media item that most recently
  precedes it.
- `PerceiverResampler`: a fixed set of learned latents cross-attends to an input of any length
  -> `[B, num_latents, D]` (Perceiver / Perceiver IO).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import cross
from attnx.layers.feed_forward import FeedForward
from attnx.layers.norm import LayerNorm

Array = jax.Array


def _check_features(x: Array, features: int, name: str, modality: str) -> None:
    """ValueError unless x is `[batch, length, features]`."""
    if jnp.ndim(x) != 3 or x.shape[-1] != features:
        raise ValueError(f"{name} (the {modality} modality) must be [batch, length, {features}] "
                         f"to fit its projection, got shape {jnp.shape(x)}")


def _check_mask(mask: Array | None, x: Array, name: str, modality: str) -> None:
    """ValueError unless mask is None or `[batch, length]` of x."""
    if mask is not None and tuple(jnp.shape(mask)) != x.shape[:2]:
        raise ValueError(f"{name} (the {modality} modality) must be a padding mask [batch, "
                         f"length] = {x.shape[:2]}, got shape {tuple(jnp.shape(mask))}")


class CrossAttention(nnx.Module):
    """Multi-head attention from one modality `x_q [B, Tq, Dq]` to another `x_kv [B, Tk, Dkv]`.

    Args:
      d_q, d_kv: feature sizes of the query and key/value modalities (the output has d_q).
      num_heads: N; `head_dim` defaults to d_q // N.
      mechanism: a registry mechanism with `supports_cross_length` ('dense', 'flash').
      options: the mechanism's options.
      names: the (query, key/value) modalities' names, for error messages.
    """

    def __init__(self, d_q: int, d_kv: int, num_heads: int, *, head_dim: int | None = None,
                 mechanism: str = "dense", options: Mapping[str, Any] | None = None,
                 names: tuple[str, str] = ("query", "key/value"), use_bias: bool = True,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if head_dim is None and d_q % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {names[0]} modality's "
                             f"d_q={d_q} (or give head_dim)")
        self.entry = cross.check_mechanism(mechanism)
        self.options = dict(options or {})
        self.entry.check_options(self.options)
        self.d_q, self.d_kv, self.names = d_q, d_kv, tuple(names)
        self.num_heads = num_heads
        self.head_dim = head_dim or d_q // num_heads
        inner = num_heads * self.head_dim

        def proj(din: int, dout: int) -> nnx.Linear:
            return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, rngs=rngs)

        self.query = proj(d_q, inner)
        self.key = proj(d_kv, inner)
        self.value = proj(d_kv, inner)
        self.out = proj(inner, d_q)

    def _heads(self, x: Array) -> Array:
        """[B, T, N*H] -> [B, T, N, H]."""
        return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

    def __call__(self, x_q: Array, x_kv: Array, *, q_mask: Array | None = None,
                 kv_mask: Array | None = None, pair_mask: Array | None = None) -> Array:
        """x_q `[B, Tq, Dq]`, x_kv `[B, Tk, Dkv]`, masks `[B, Tq]`, `[B, Tk]` (pair_mask
        `[B, Tq, Tk]`) -> `[B, Tq, Dq]`; padded queries and queries with no key give out(0)."""
        q_name, kv_name = self.names
        _check_features(x_q, self.d_q, "x_q", q_name)
        _check_features(x_kv, self.d_kv, "x_kv", kv_name)
        if x_q.shape[0] != x_kv.shape[0]:
            raise ValueError(f"x_q (the {q_name} modality) and x_kv (the {kv_name} modality) "
                             f"must have the same batch size, got {x_q.shape[0]} and "
                             f"{x_kv.shape[0]}")
        _check_mask(q_mask, x_q, "q_mask", q_name)
        _check_mask(kv_mask, x_kv, "kv_mask", kv_name)
        q = self._heads(self.query(x_q))
        k, v = self._heads(self.key(x_kv)), self._heads(self.value(x_kv))
        out = cross.cross_attention(q, k, v, q_mask=q_mask, kv_mask=kv_mask, pair_mask=pair_mask,
                                    mechanism=self.entry.name, **self.options)
        return self.out(out.reshape(out.shape[:2] + (-1,)))


class CoAttention(nnx.Module):
    """Co-attention of two streams `a [B, Ta, Da]`, `b [B, Tb, Db]`: each attends to the other.

        a' = a + XAttn_ab(LN_a a, LN_b b),   b' = b + XAttn_ba(LN_b b, LN_a a)

    `shared=False` (ViLBERT): each direction has its own projections and each stream its own
    LayerNorm. `shared=True` (LXMERT): one cross-attention module and one LayerNorm serve both
    directions (Da must equal Db), so swapping the streams swaps the outputs.

    Args:
      d_a, d_b: feature sizes of the two streams.
      num_heads, head_dim, mechanism, options: as `CrossAttention`.
      names: the streams' modality names, for error messages.
    """

    def __init__(self, d_a: int, d_b: int, num_heads: int, *, shared: bool = False,
                 head_dim: int | None = None, mechanism: str = "dense",
                 options: Mapping[str, Any] | None = None,
                 names: tuple[str, str] = ("a", "b"), dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if shared and d_a != d_b:
            raise ValueError(f"shared co-attention needs equal widths; the {names[0]} modality "
                             f"has d_a={d_a}, the {names[1]} modality d_b={d_b}")
        self.shared, self.names = shared, tuple(names)
        common = dict(head_dim=head_dim, mechanism=mechanism, options=options, dtype=dtype,
                      rngs=rngs)
        self.a_from_b = CrossAttention(d_a, d_b, num_heads, names=self.names, **common)
        self.norm_a = LayerNorm(d_a, rngs=rngs)
        if shared:
            self.b_from_a, self.norm_b = self.a_from_b, self.norm_a
        else:
            self.b_from_a = CrossAttention(d_b, d_a, num_heads, names=self.names[::-1], **common)
            self.norm_b = LayerNorm(d_b, rngs=rngs)

    def __call__(self, a: Array, b: Array, *, a_mask: Array | None = None,
                 b_mask: Array | None = None) -> tuple[Array, Array]:
        """a `[B, Ta, Da]`, b `[B, Tb, Db]` (masks `[B, Ta]`, `[B, Tb]`) -> (a', b')."""
        _check_features(a, self.a_from_b.d_q, "a", self.names[0])
        _check_features(b, self.b_from_a.d_q, "b", self.names[1])
        h_a, h_b = self.norm_a(a), self.norm_b(b)
        a_out = a + self.a_from_b(h_a, h_b, q_mask=a_mask, kv_mask=b_mask)
        b_out = b + self.b_from_a(h_b, h_a, q_mask=b_mask, kv_mask=a_mask)
        return a_out, b_out


class GatedCrossAttention(nnx.Module):
    """Flamingo's gated cross-attention block: text `x [B, T, D]` attends to media `[B, M, Dm]`.

        x = x + tanh(alpha) * XAttn(LN x, media);   x = x + tanh(beta) * FFW(LN x)

    alpha and beta are scalar parameters, 0 at initialisation: the block starts as the identity,
    so it can be inserted into a trained text model without changing it.

    Media positions: `media_ids [B, M]` (the media item, 0, 1, ..., each media token belongs to)
    and `media_index [B, T]` (per text token, the latest media item at or before it; -1: none
    yet). Given them, a text token sees the tokens of every media item up to its own
    (`only_immediate_media=False`) or of that item only (`only_immediate_media=True`, Flamingo's
    default, which requires them); a text token before the first item sees no media and gets
    exactly no media influence. Without them, every text token sees all media.

    Args:
      d_model: text width D; d_media: media width Dm.
      num_heads, head_dim, mechanism, options: as `CrossAttention` (media positions need a
        mechanism of mask kind 'full': dense).
      d_ff: hidden width of the gated feed-forward.
      names: the (text, media) modalities' names, for error messages.
    """

    def __init__(self, d_model: int, d_media: int, num_heads: int, *, d_ff: int,
                 only_immediate_media: bool = False, head_dim: int | None = None,
                 mechanism: str = "dense", options: Mapping[str, Any] | None = None,
                 names: tuple[str, str] = ("text", "media"), dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        if only_immediate_media:
            cross.check_mechanism(mechanism, pair_mask=True)
        self.only_immediate_media = only_immediate_media
        self.names = tuple(names)
        self.attention = CrossAttention(d_model, d_media, num_heads, head_dim=head_dim,
                                        mechanism=mechanism, options=options, names=self.names,
                                        dtype=dtype, rngs=rngs)
        self.attention_norm = LayerNorm(d_model, rngs=rngs)
        self.feed_forward = FeedForward(d_model, d_ff, activation="gelu", dtype=dtype, rngs=rngs)
        self.feed_forward_norm = LayerNorm(d_model, rngs=rngs)
        self.alpha = nnx.Param(jnp.zeros((), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((), jnp.float32))

    def media_pairs(self, x: Array, media: Array, media_index: Array | None,
                    media_ids: Array | None) -> Array | None:
        """The `[B, T, M]` text-media pairs the media positions allow (None: all pairs)."""
        text, media_name = self.names
        if (media_index is None) != (media_ids is None):
            raise ValueError(f"give both media_index (the {text} modality) and media_ids (the "
                             f"{media_name} modality), or neither")
        if media_index is None:
            if self.only_immediate_media:
                raise ValueError(f"only_immediate_media needs media_index [batch, length] (the "
                                 f"{text} modality) and media_ids [batch, length] (the "
                                 f"{media_name} modality)")
            return None
        _check_mask(media_index, x, "media_index", text)
        _check_mask(media_ids, media, "media_ids", media_name)
        seen, item = media_index[:, :, None], media_ids[:, None, :]
        return (item == seen) if self.only_immediate_media else (item <= seen)

    def __call__(self, x: Array, media: Array, *, x_mask: Array | None = None,
                 media_mask: Array | None = None, media_index: Array | None = None,
                 media_ids: Array | None = None) -> Array:
        """x `[B, T, D]`, media `[B, M, Dm]`, masks `[B, T]` and `[B, M]`, media positions
        `[B, T]` and `[B, M]` (ints) -> `[B, T, D]`."""
        _check_features(x, self.attention.d_q, "x", self.names[0])
        pairs = self.media_pairs(x, media, media_index, media_ids)
        attended = self.attention(self.attention_norm(x), media, q_mask=x_mask, kv_mask=media_mask,
                                  pair_mask=pairs)
        x = x + jnp.tanh(self.alpha[...]).astype(x.dtype) * attended
        return x + jnp.tanh(self.beta[...]).astype(x.dtype) * self.feed_forward(
            self.feed_forward_norm(x))


class PerceiverResampler(nnx.Module):
    """Learned latents `[L, D]` cross-attend to an input `x [B, T, Din]` of any length T.

        z = latents;  per layer: z = z + XAttn(LN z, LN x);  z = z + FFW(LN z)
        -> LN z `[B, L, D]`

    Args:
      d_input: Din; d_latent: D; num_latents: L.
      num_heads, head_dim, mechanism, options: as `CrossAttention`.
      num_layers: cross-attention + feed-forward layers.
      d_ff: feed-forward hidden width.
      name: the input modality's name, for error messages.
    """

    def __init__(self, d_input: int, d_latent: int, num_latents: int, num_heads: int, *,
                 d_ff: int, num_layers: int = 1, head_dim: int | None = None,
                 mechanism: str = "dense", options: Mapping[str, Any] | None = None,
                 name: str = "input", dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if num_latents < 1 or num_layers < 1:
            raise ValueError(f"num_latents and num_layers must be >= 1, got {num_latents} and "
                             f"{num_layers}")
        self.d_input, self.name = d_input, name
        self.latents = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(),
                                                               (num_latents, d_latent)))
        self.input_norm = LayerNorm(d_input, rngs=rngs)
        self.attentions = nnx.List([
            CrossAttention(d_latent, d_input, num_heads, head_dim=head_dim, mechanism=mechanism,
                           options=options, names=("latent", name), dtype=dtype, rngs=rngs)
            for _ in range(num_layers)])
        self.attention_norms = nnx.List([LayerNorm(d_latent, rngs=rngs)
                                         for _ in range(num_layers)])
        self.feed_forwards = nnx.List([
            FeedForward(d_latent, d_ff, activation="gelu", dtype=dtype, rngs=rngs)
            for _ in range(num_layers)])
        self.feed_forward_norms = nnx.List([LayerNorm(d_latent, rngs=rngs)
                                            for _ in range(num_layers)])
        self.final_norm = LayerNorm(d_latent, rngs=rngs)

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        """x `[B, T, Din]` (mask `[B, T]`) -> latents `[B, num_latents, D]`, for any T."""
        _check_features(x, self.d_input, "x", self.name)
        _check_mask(mask, x, "mask", self.name)
        h = self.input_norm(x)
        z = jnp.broadcast_to(self.latents[...].astype(x.dtype),
                             (x.shape[0],) + self.latents.shape)
        for attend, norm, ff, ff_norm in zip(self.attentions, self.attention_norms,
                                             self.feed_forwards, self.feed_forward_norms):
            z = z + attend(norm(z), h, kv_mask=mask)
            z = z + ff(ff_norm(z))
        return self.final_norm(z)
