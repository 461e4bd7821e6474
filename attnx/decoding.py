"""Decoding: sampling continuations from a language model, greedy decoding of a seq2seq model.

A decoder-only LM that decodes incrementally (a key/value cache, or local and LSH attention's own
decoding) runs the prompt once and then one token per step; other models recompute a fixed window
of tokens per generated token. `python -m attnx.sample` and
the trainer's TensorBoard samples (through `attnx.tasks`) call these functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def _choose(logits: Array, rng: Array, temperature: float, top_k: int | None) -> Array:
    """Sample ids `[B]` from logits `[B, V]`; temperature 0 means greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, -1)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, -1)


# Jitted once at module level, so that repeated sampling (every evaluation's TensorBoard samples)
# reuses the compiled functions of the same model structure and shapes.
@functools.partial(nnx.jit, static_argnums=(2,))
def _prefill(model: nnx.Module, ids: Array, max_len: int):
    return model.prefill(ids, max_len)


@nnx.jit
def _decode(model: nnx.Module, ids: Array, caches):
    return model.decode(ids, caches)


@nnx.jit
def _forward(model: nnx.Module, ids: Array) -> Array:
    return model(ids)


@nnx.jit
def _encode(model: nnx.Module, inputs: Array, inputs_mask: Array) -> Array:
    return model.encode(inputs, inputs_mask)


@nnx.jit
def _decode_seq2seq(model: nnx.Module, ids: Array, memory: Array, inputs_mask: Array) -> Array:
    return model.decode(ids, memory, inputs_mask)


def generate_lm(model: nnx.Module, prompt: np.ndarray, num_tokens: int, *, window: int,
                temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                use_cache: bool | None = None) -> np.ndarray:
    """Continue `prompt` `[B, P]` by `num_tokens`: -> `[B, P' + num_tokens]`.

    The whole output fits in `window` tokens (the model's length): a longer prompt keeps its
    last P' = window - num_tokens tokens. Models that decode incrementally (`supports_decoding`:
    a key/value cache, or local and LSH attention's own decoding) run the prompt once
    (`prefill`) and then one token per step (`decode`); `use_cache=None` picks that whenever the
    model can. Otherwise each step runs the model on the window, zero-padded after the tokens so
    far: the mechanisms without incremental decoding (flash, Longformer's sliding window) are
    causal position by position, so the padding never reaches an earlier token.
    """
    if not 0 < num_tokens < window:
        raise ValueError(f"num_tokens={num_tokens} must be in [1, window={window})")
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, length >= 1] token ids, got shape "
                         f"{prompt.shape}")
    prompt = np.asarray(prompt)[:, -(window - num_tokens):]
    batch, length = prompt.shape
    rng = jax.random.key(seed)
    if use_cache is None:
        use_cache = getattr(model, "supports_decoding", False)
    if use_cache:
        logits, caches = _prefill(model, jnp.asarray(prompt), length + num_tokens)
        out = [prompt]
        last = logits[:, -1]
        for t in range(num_tokens):
            token = _choose(last, jax.random.fold_in(rng, t), temperature, top_k)
            out.append(np.asarray(token)[:, None])
            if t + 1 < num_tokens:
                logits, caches = _decode(model, token[:, None].astype(jnp.int32), caches)
                last = logits[:, -1]
        return np.concatenate(out, axis=1)
    buffer = np.zeros((batch, window), np.int32)
    buffer[:, :length] = prompt
    end = length + num_tokens
    for t in range(length, end):
        logits = _forward(model, jnp.asarray(buffer))[:, t - 1]
        buffer[:, t] = np.asarray(_choose(logits, jax.random.fold_in(rng, t), temperature, top_k))
    return buffer[:, :end]


def generate_seq2seq(model: nnx.Module, inputs: np.ndarray, inputs_mask: np.ndarray,
                     target_len: int, bos_id: int, eos_id: int | None) -> np.ndarray:
    """Greedy decoding: inputs `[B, S]` -> output ids `[B, target_len]` (after BOS)."""
    batch = inputs.shape[0]
    memory = _encode(model, inputs, inputs_mask)
    buffer = np.zeros((batch, target_len), np.int32)
    buffer[:, 0] = bos_id
    out = np.zeros((batch, target_len), np.int32)
    for t in range(target_len):
        token = np.asarray(jnp.argmax(_decode_seq2seq(model, buffer, memory, inputs_mask)[:, t],
                                      -1))
        out[:, t] = token
        if t + 1 < target_len:
            buffer[:, t + 1] = token
        if eos_id is not None and (out[:, : t + 1] == eos_id).any(1).all():
            break
    return out
