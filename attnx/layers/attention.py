"""The multi-head attention module: projections, heads, dropout; the mechanism is plugged in by name.

The module owns everything around the pure attention function: query/key/value projections (one
shared query-key projection for mechanisms that need it, e.g. LSH), the global projections of
Longformer, the output projection, and a key/value cache for incremental decoding (with the
mechanisms whose registry entry `supports_cache`) or the mechanism's own decoding (`prefill`,
`decode_step`: local and LSH attention). Randomness is explicit: the caller passes one `rng` key (or None for deterministic
evaluation) and the module derives the dropout and hashing keys from it, so that a reversible layer
can replay the exact same call in its backward pass.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import _common, dense, registry

Array = jax.Array

# Key folded into the module's rng for each use, so that uses never share randomness.
_DROPOUT_STREAM, _HASH_STREAM = 0, 1


def init_cache(batch: int, max_len: int, num_heads: int, head_dim: int,
               dtype: Any = jnp.float32) -> dict[str, Array]:
    """An empty key/value cache for one attention layer: k, v `[B, max_len, N, H]` and an index."""
    zeros = jnp.zeros((batch, max_len, num_heads, head_dim), dtype)
    return {"k": zeros, "v": zeros, "index": jnp.zeros((), jnp.int32)}


class MultiHeadAttention(nnx.Module):
    """Multi-head attention over `[B, T, D]` inputs with a registry mechanism.

    Args:
      d_model: model width D (input and output features).
      num_heads: number of heads N; `head_dim` defaults to D // N.
      mechanism: registry name (`dense`, `flash`, `lsh`, `local`, `longformer`, ...).
      options: keyword options of the mechanism (e.g. `chunk_len`, `n_hashes`, `window`); the
        registry entry lists the valid ones.
      attention_dropout: dropout rate on the attention weights (0 for mechanisms without
        dropout).
      use_bias: whether projections have biases.
      dtype: compute dtype of the projections (parameters stay float32).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        mechanism: str = "dense",
        options: Mapping[str, Any] | None = None,
        attention_dropout: float = 0.0,
        use_bias: bool = True,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if d_model % num_heads and head_dim is None:
            raise ValueError(
                f"num_heads={num_heads} must divide d_model={d_model} (or give head_dim)")
        self.mechanism = registry.get(mechanism)
        if self.mechanism.layout != "sequence":
            raise ValueError(
                f"mechanism={mechanism!r} attends over {self.mechanism.layout!r} inputs; "
                "MultiHeadAttention takes the 'sequence' mechanisms "
                f"{registry.names(layout='sequence')}")
        self.options = dict(options or {})
        self.mechanism.check_options(self.options)
        if attention_dropout and not self.mechanism.supports_dropout:
            raise ValueError(f"attention_dropout={attention_dropout}, but mechanism "
                             f"{self.mechanism.name!r} has no attention dropout; use 0.0")
        self.num_heads = num_heads
        self.head_dim = head_dim or d_model // num_heads
        self.attention_dropout = attention_dropout
        inner = num_heads * self.head_dim

        def proj(din: int, dout: int) -> nnx.Linear:
            return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, rngs=rngs)

        if self.mechanism.shared_qk:
            self.qk = proj(d_model, inner)
        else:
            self.query = proj(d_model, inner)
            self.key = proj(d_model, inner)
        self.value = proj(d_model, inner)
        if self.mechanism.global_projections:
            self.global_query = proj(d_model, inner)
            self.global_key = proj(d_model, inner)
            self.global_value = proj(d_model, inner)
        self.out = proj(inner, d_model)

    def _heads(self, x: Array) -> Array:
        """[B, T, N*H] -> [B, T, N, H]."""
        return x.reshape(x.shape[:-1] + (self.num_heads, self.head_dim))

    def project(self, x_q: Array, x_kv: Array) -> tuple[Array, Array, Array]:
        """Queries `[B, Tq, N, H]`, keys and values `[B, Tk, N, H]` (q is k for shared-QK)."""
        if self.mechanism.shared_qk:
            if x_kv is not x_q:
                raise ValueError(f"mechanism {self.mechanism.name!r} shares query and key "
                                 "projections and supports self-attention only")
            qk = self._heads(self.qk(x_q))
            return qk, qk, self._heads(self.value(x_q))
        return (self._heads(self.query(x_q)), self._heads(self.key(x_kv)),
                self._heads(self.value(x_kv)))

    def mechanism_kwargs(self, *, mask: Array | None, causal: bool, rng: Array | None,
                         global_mask: Array | None, x_q: Array) -> dict[str, Any]:
        """Keyword arguments of the mechanism call, shared by `__call__` and `pattern`."""
        kwargs: dict[str, Any] = dict(self.options, causal=causal)
        if mask is not None:
            kwargs["mask"] = self.mechanism.mask_argument(mask)
        if self.mechanism.needs_rng:
            hash_rng = jax.random.key(0) if rng is None else jax.random.fold_in(rng, _HASH_STREAM)
            kwargs["rng"] = hash_rng
        if self.mechanism.global_projections:
            kwargs["global_mask"] = global_mask
            if global_mask is not None:
                kwargs["global_qkv"] = (self._heads(self.global_query(x_q)),
                                        self._heads(self.global_key(x_q)),
                                        self._heads(self.global_value(x_q)))
        elif global_mask is not None:
            raise ValueError(f"global_mask given, but mechanism {self.mechanism.name!r} has no "
                             "global tokens (use attention='longformer')")
        return kwargs

    def __call__(
        self,
        x_q: Array,
        x_kv: Array | None = None,
        *,
        mask: Array | None = None,
        causal: bool = False,
        global_mask: Array | None = None,
        rng: Array | None = None,
        cache: dict[str, Array] | None = None,
    ) -> Array | tuple[Array, dict[str, Array]]:
        """Attend from `x_q` `[B, Tq, D]` to `x_kv` `[B, Tk, D]` (self-attention if None).

        Args:
          mask: key padding mask `[B, Tk]`, True = real token.
          causal: query i sees keys j <= i.
          global_mask: `[B, T]` tokens with global attention (Longformer only).
          rng: key for attention dropout and hashing; None = deterministic (no dropout).
          cache: a key/value cache from `init_cache` (mechanisms with `supports_cache`); the call
            then appends the new keys/values at `cache['index']` and returns `(out, new_cache)`.

        Returns:
          `[B, Tq, D]`, or `(out, new_cache)` when `cache` is given.
        """
        x_kv = x_q if x_kv is None else x_kv
        q, k, v = self.project(x_q, x_kv)
        dropout_rate = self.attention_dropout if rng is not None else 0.0
        dropout_rng = jax.random.fold_in(rng, _DROPOUT_STREAM) if dropout_rate else None
        if cache is not None:
            return self._cached_call(q, k, v, cache, mask, dropout_rate, dropout_rng)
        kwargs = self.mechanism_kwargs(mask=mask, causal=causal, rng=rng, global_mask=global_mask,
                                       x_q=x_q)
        if self.mechanism.shared_qk:
            out = self.mechanism.fn(q, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                                    **kwargs)
        else:
            out = self.mechanism.fn(q, k, v, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                                    **kwargs)
        return self.out(out.reshape(out.shape[:2] + (-1,)))

    def _cached_call(self, q, k, v, cache, mask, dropout_rate, dropout_rng):
        """Incremental causal decoding: `Tq` new tokens attend to the cache plus themselves."""
        if not self.mechanism.supports_cache:
            able = [name for name in registry.names() if registry.get(name).supports_cache]
            raise ValueError(f"mechanism {self.mechanism.name!r} has no key/value cache; "
                             f"mechanisms with one: {', '.join(able)}")
        index = cache["index"]
        appended = _common.append_to_cache(cache, k, v)
        new_k, new_v = appended["k"], appended["v"]
        tq, max_len = q.shape[1], new_k.shape[1]
        # Query t (absolute position index + t) sees cached keys 0 .. index + t.
        visible = (jnp.arange(max_len)[None, :] <= index + jnp.arange(tq)[:, None])
        full_mask = visible[None, None]
        if mask is not None:
            full_mask = dense.combine_masks(full_mask, dense.key_padding_pattern(mask))
        out = self.mechanism.fn(q, new_k, new_v, mask=full_mask, dropout_rate=dropout_rate,
                                dropout_rng=dropout_rng, **self.options)
        out = self.out(out.reshape(out.shape[:2] + (-1,)))
        return out, {"k": new_k, "v": new_v, "index": index + tq}

    @property
    def can_decode(self) -> bool:
        """Whether `prefill` / `decode_step` work: a key/value cache or a decoding rule."""
        return self.mechanism.supports_cache or self.mechanism.decoding is not None

    def _decoding_options(self, x: Array, overrides: Mapping[str, Any]) -> dict[str, Any]:
        if not self.can_decode:
            able = [name for name in registry.names()
                    if registry.get(name).supports_cache or registry.get(name).decoding]
            raise ValueError(f"mechanism {self.mechanism.name!r} cannot decode incrementally; "
                             f"mechanisms that can: {', '.join(able)}")
        kwargs = self.mechanism_kwargs(mask=None, causal=True, rng=None, global_mask=None, x_q=x)
        kwargs.pop("causal")
        return {**kwargs, **overrides}

    def prefill(self, x: Array, max_len: int, *,
                options: Mapping[str, Any] | None = None) -> tuple[Array, dict[str, Array]]:
        """Causal self-attention over a prompt `x` `[B, P, D]` (deterministic), and the cache of
        `max_len` positions that `decode_step` continues from: (`[B, P, D]`, cache).
        `options` override the layer's mechanism options (e.g. evaluation's LSH rounds)."""
        kwargs = self._decoding_options(x, options or {})
        if self.mechanism.decoding is None:  # a plain key/value cache (`supports_cache`)
            cache = init_cache(x.shape[0], max_len, self.num_heads, self.head_dim,
                               self.out.dtype or jnp.float32)
            return self(x, cache=cache)
        q, k, v = self.project(x, x)
        out, cache = self.mechanism.prefill_fn(*self.mechanism.operands(q, k, v),
                                               max_len=max_len, **kwargs)
        return self.out(out.reshape(out.shape[:2] + (-1,))), cache

    def decode_step(self, x: Array, cache: dict[str, Array], *,
                    options: Mapping[str, Any] | None = None) -> tuple[Array, dict[str, Array]]:
        """One new token `x` `[B, 1, D]` after the cached ones: (`[B, 1, D]`, new cache). Exact
        for key/value caches and decoding 'exact' mechanisms; LSH follows its decoding rule."""
        kwargs = self._decoding_options(x, options or {})
        if self.mechanism.decoding is None:
            return self(x, cache=cache)
        q, k, v = self.project(x, x)
        out, cache = self.mechanism.decode_step_fn(*self.mechanism.operands(q, k, v), cache,
                                                   **kwargs)
        return self.out(out.reshape(out.shape[:2] + (-1,))), cache

    def pattern(self, x: Array, *, mask: Array | None = None, causal: bool = False,
                global_mask: Array | None = None, rng: Array | None = None,
                options: Mapping[str, Any] | None = None) -> Array:
        """The boolean `[B, N, T, T]` pattern this layer's mechanism attends for self-attention;
        `options` override the layer's mechanism options (as in `prefill`)."""
        q, k, _ = self.project(x, x)
        kwargs = self.mechanism_kwargs(mask=mask, causal=causal, rng=rng, global_mask=global_mask,
                                       x_q=x)
        kwargs.pop("global_qkv", None)
        return self.mechanism.pattern_fn(q, k, **{**kwargs, **(options or {})})

    def weights(self, x: Array, *, mask: Array | None = None, causal: bool = False,
                global_mask: Array | None = None, rng: Array | None = None,
                options: Mapping[str, Any] | None = None) -> Array:
        """Attention weights `[B, N, T, T]` for images: softmax restricted to the pattern.

        For dense attention these are exactly the weights used; for efficient mechanisms they are
        the dense equivalent of the pattern the mechanism computed (e.g. the LSH buckets).
        """
        q, k, _ = self.project(x, x)
        allowed = self.pattern(x, mask=mask, causal=causal, global_mask=global_mask, rng=rng,
                               options=options)
        return dense.attention_weights(q, k, mask=allowed)
