"""An LSTM classifier: the recurrent baseline of the Long Range Arena comparisons.

    ids [B, T], mask [B, T] -> embedding [B, T, D] -> num_layers (bi)LSTM layers [B, T, dirs * H]
      -> pool: each direction's state after its last real token ('last'), or the masked mean of
         the top layer's outputs ('mean') -> linear head -> logits [B, C] (float32)

Padding never reaches the recurrence: at a masked step the state is carried through unchanged and
the output is zero, so the result is the same for any padding ids and any amount of padding (and
the backward direction starts at each row's last real token). The recurrence is one
`jax.lax.scan` per layer and direction; the input projections of all steps are one matmul before
it. Gate pre-activations and the cell state are float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.layers.feed_forward import dropout
from attnx.layers.pool import masked_mean

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """Sizes and choices of the LSTM classifier; `model.*` fields of an experiment config."""

    vocab_size: int
    d_model: int = 128  # embedding width
    hidden_size: int = 128  # per direction
    num_layers: int = 1
    bidirectional: bool = True
    dropout_rate: float = 0.0  # on the embeddings and between layers
    pool: str = "last"  # 'last' or 'mean'
    num_classes: int | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be an integer >= 1, got {value!r}")
        if self.pool not in ("last", "mean"):
            raise ValueError(f"model.pool must be 'last' or 'mean', got {self.pool!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")


class LSTMLayer(nnx.Module):
    """One direction of one LSTM layer: x `[B, T, D_in]`, mask `[B, T]` ->
    (outputs `[B, T, H]`, final hidden state `[B, H]`).

    Gates (i, f, g, o) = x W_x + h W_h + b; c' = sig(f) c + sig(i) tanh(g); h' = sig(o) tanh(c').
    The forget-gate bias starts at 1.
    """

    def __init__(self, d_in: int, hidden_size: int, *, reverse: bool = False,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.hidden_size = hidden_size
        self.reverse = reverse
        def forget_bias_one(key, shape, dtype=jnp.float32):
            del key
            return jnp.zeros(shape, dtype).at[hidden_size : 2 * hidden_size].set(1.0)

        self.input = nnx.Linear(d_in, 4 * hidden_size, bias_init=forget_bias_one, dtype=dtype,
                                rngs=rngs)
        self.recurrent = nnx.Linear(hidden_size, 4 * hidden_size, use_bias=False, dtype=dtype,
                                    kernel_init=nnx.initializers.orthogonal(), rngs=rngs)

    def __call__(self, x: Array, mask: Array) -> tuple[Array, Array]:
        b = x.shape[0]
        h_size = self.hidden_size
        gates_x = self.input(x).astype(jnp.float32)  # [B, T, 4H], every step at once
        w_h = self.recurrent.kernel[...]
        dtype = self.recurrent.dtype

        def step(carry, inputs):
            h, c = carry
            gx, m = inputs  # [B, 4H], [B]
            gates = gx + (h.astype(dtype) @ w_h.astype(dtype)).astype(jnp.float32)
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
            m = m[:, None]
            h, c = jnp.where(m, new_h, h), jnp.where(m, new_c, c)
            return (h, c), jnp.where(m, new_h, 0.0)

        zeros = jnp.zeros((b, h_size), jnp.float32)
        (h, _), outputs = jax.lax.scan(
            step, (zeros, zeros), (gates_x.swapaxes(0, 1), mask.astype(bool).swapaxes(0, 1)),
            reverse=self.reverse)
        return outputs.swapaxes(0, 1).astype(x.dtype), h


class LSTMClassifier(nnx.Module):
    """Embedding, stacked (bi)LSTM and a linear head: ids `[B, T]`, mask `[B, T]` -> `[B, C]`."""

    def __init__(self, cfg: LSTMConfig, *, rngs: nnx.Rngs):
        if not cfg.num_classes:
            raise ValueError("model.num_classes must be set for a classifier")
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        directions = (False, True) if cfg.bidirectional else (False,)
        width = cfg.hidden_size * len(directions)
        self.layers = nnx.List([
            nnx.List([LSTMLayer(cfg.d_model if layer == 0 else width, cfg.hidden_size,
                                reverse=reverse, dtype=cfg.dtype, rngs=rngs)
                      for reverse in directions])
            for layer in range(cfg.num_layers)])
        self.head = nnx.Linear(width, cfg.num_classes, rngs=rngs)

    def __call__(self, ids: Array, mask: Array, *, rng: Array | None = None) -> Array:
        """ids `[B, T]`, mask `[B, T]` (True = real token); `rng` for dropout, None = none."""
        cfg = self.cfg
        rngs = [None] * (cfg.num_layers + 1) if rng is None else list(
            jax.random.split(rng, cfg.num_layers + 1))
        x = dropout(self.embed(ids).astype(cfg.dtype), cfg.dropout_rate, rngs[0])
        for index, directions in enumerate(self.layers):
            if index:
                x = dropout(x, cfg.dropout_rate, rngs[index])
            results = [layer(x, mask) for layer in directions]
            x = jnp.concatenate([out for out, _ in results], axis=-1)
            finals = jnp.concatenate([h for _, h in results], axis=-1)
        if cfg.pool == "last":
            pooled = finals
        else:
            pooled = masked_mean(x.astype(jnp.float32), mask)
        pooled = dropout(pooled.astype(cfg.dtype), cfg.dropout_rate, rngs[-1])
        return self.head(pooled).astype(jnp.float32)
