"""Attention-map images for TensorBoard: one image per layer, heads side by side.

For dense attention the image shows the softmax weights; for efficient mechanisms it shows the
dense equivalent of the pattern they computed (LSH buckets after sorting, the Longformer band and
globals, local chunks), as weights restricted to that pattern. Long sequences are max-pooled down to
at most `max_pixels` per side, so that sparse patterns stay visible.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


def _pool(weights: np.ndarray, max_pixels: int) -> np.ndarray:
    """Max-pool `[T, T]` down to at most `max_pixels` per side."""
    t = weights.shape[-1]
    factor = -(-t // max_pixels)
    if factor == 1:
        return weights
    padded = np.zeros((-(-t // factor) * factor,) * 2, weights.dtype)
    padded[:t, :t] = weights
    n = padded.shape[0] // factor
    return padded.reshape(n, factor, n, factor).max(axis=(1, 3))


def layer_images(maps: list[jax.Array], *, example: int = 0,
                 max_pixels: int = 128) -> dict[str, np.ndarray]:
    """`maps[l]`: `[B, N, T, T]` -> {'attention/layer_l': `[H, N * (W + 1)]` image in [0, 1]}."""
    images = {}
    for layer, weights in enumerate(maps):
        heads = []
        for head in np.asarray(jax.device_get(weights[example]), np.float32):
            pooled = _pool(head, max_pixels)
            scale = pooled.max()
            heads.append(pooled / scale if scale > 0 else pooled)
            heads.append(np.ones((pooled.shape[0], 1), np.float32))  # a white separator
        images[f"attention/layer_{layer}"] = np.concatenate(heads[:-1], axis=1)
    return images


@nnx.jit
def _jitted_maps(model, *features):
    return model.attention_maps(*features)


def model_maps(model, task, batch: dict[str, np.ndarray]) -> list[jax.Array] | None:
    """The model's per-layer attention weights on `batch` (the `task`'s `map_features`), or None
    if the model or its task cannot draw them. Jitted: compiled at a run's first evaluation,
    reused at the next ones (same model structure and shapes)."""
    if task.map_features is None or not hasattr(model, "attention_maps"):
        return None
    return _jitted_maps(model, *(batch[k] for k in task.map_features))
