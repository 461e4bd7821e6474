"""Longformer (Beltagy et al., 2020) encoders, built from the blocks of `transformer.py`.

Every self-attention layer is sliding-window + global attention (`attention='longformer'`,
`attnx/attention/longformer.py`): each token sees the tokens within `window` of it, and global
tokens see, and are seen by, every token through their own query/key/value projections.

- `longformer_classifier` (in `attnx.models.MODELS`): `transformer.EncoderClassifier` with a
  `LongformerConfig`: the prepended [CLS] token is the one global token, as in the paper's
  classification setup, and is pooled for the logits.
- `LongformerMLM`: the masked language model of the paper's pretraining (embedding, the same
  encoder stack, a dense + GELU + LayerNorm transform and an output layer tied to the token
  embedding), with `mask_tokens` for BERT-style corruption. It is a Python API, not a trainer
  model: `attnx.train` has no masked-LM task, so it is not in `MODELS`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.attention import registry
from attnx.layers.norm import LayerNorm
from attnx.models.transformer import Embedding, Stack, TransformerConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LongformerConfig(TransformerConfig):
    """A `TransformerConfig` whose attention is Longformer's.

    `attention` must be a mechanism with global tokens (`global_projections` in its registry
    entry). `attention_options` are its options (`sliding_window_attention`'s: `window`,
    `dilation`, `max_global`, `block_size`); missing ones default to the registry's LRA preset
    (window 64, one global token per row, the classifier's [CLS]). `max_global` bounds the global
    tokens of a row: it must be set, since under jit the number of global tokens cannot be read
    from the mask.
    """

    attention: str = "longformer"

    def __post_init__(self):
        super().__post_init__()
        mechanism = registry.get(self.attention)
        if not mechanism.global_projections:
            with_globals = [n for n in registry.names() if registry.get(n).global_projections]
            raise ValueError("a Longformer model needs a mechanism with global tokens, "
                             f"model.attention={' or '.join(map(repr, with_globals))}, got "
                             f"{self.attention!r} (use transformer_classifier for other "
                             "mechanisms)")
        options = {**mechanism.preset("lra"), **dict(self.attention_options)}
        if options["max_global"] is None or options["max_global"] < 1:
            raise ValueError("model.attention_options.max_global must be >= 1 for a Longformer "
                             f"model (its [CLS] is global), got {options['max_global']!r}")
        object.__setattr__(self, "attention_options", options)


def mask_tokens(ids: Array, mask: Array, rng: Array, *, mask_id: int, vocab_size: int,
                rate: float = 0.15) -> tuple[Array, Array, Array]:
    """BERT-style corruption for masked-LM training.

    Each real token (`mask` True) is chosen with probability `rate`; a chosen token becomes
    `mask_id` with probability 0.8, a random id in [1, vocab_size) with probability 0.1, and stays
    itself otherwise. Returns (inputs `[B, T]`, targets `[B, T]` = ids, weights `[B, T]` float32:
    1 at chosen tokens).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, vocab_size={vocab_size}), got {mask_id}")
    r_choose, r_kind, r_random = jax.random.split(rng, 3)
    chosen = jax.random.bernoulli(r_choose, rate, ids.shape) & mask.astype(bool)
    kind = jax.random.uniform(r_kind, ids.shape)
    random_ids = jax.random.randint(r_random, ids.shape, 1, vocab_size, ids.dtype)
    corrupted = jnp.where(kind < 0.8, mask_id, jnp.where(kind < 0.9, random_ids, ids))
    return jnp.where(chosen, corrupted, ids), ids, chosen.astype(jnp.float32)


class LongformerMLM(nnx.Module):
    """Masked LM: ids `[B, T]`, mask `[B, T]`, global_mask `[B, T]` or None -> `[B, T, V]`."""

    def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs=rngs)
        self.encoder = Stack(cfg, cfg.num_layers, rngs=rngs)
        self.transform = nnx.Linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.transform_norm = LayerNorm(d, rngs=rngs)
        self.output_bias = nnx.Param(jnp.zeros(cfg.vocab_size))

    def __call__(self, ids: Array, mask: Array, *, global_mask: Array | None = None,
                 rng: Array | None = None) -> Array:
        """`global_mask` marks tokens with global attention (at most `max_global` per row);
        `rng` drives dropout (None: none). Logits are float32."""
        r_embed, r_stack = (None, None) if rng is None else tuple(jax.random.split(rng))
        x = self.embed(ids, rng=r_embed)
        x = self.encoder(x, mask=mask, global_mask=global_mask, rng=r_stack)
        h = self.transform_norm(jax.nn.gelu(self.transform(x)))
        table = self.embed.tokens.embedding[...].astype(h.dtype)
        return (h @ table.T).astype(jnp.float32) + self.output_bias[...]
