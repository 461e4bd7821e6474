"""Patch and tubelet embeddings: the tokens of every image, video and two-modality model.

`PatchEmbed` cuts an image `[B, H, W, C]` into non-overlapping P x P patches and projects each to
D features: `[B, H/P, W/P, D]` (a feature map; `tokens()` flattens it to `[B, H/P * W/P, D]` in
raster order). `TubeletEmbed` does the same for a clip `[B, T, H, W, C]` with t x P x P tubelets
(ViViT's tubelet embedding; t = 1 embeds each frame on its own): `[B, T/t, H/P * W/P, D]`, time-major
(frames, then the spatial tokens of a frame). Both are one linear map of the flattened patch, written
as a strided convolution.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def _check_divides(name: str, size: int, patch: int, what: str) -> None:
    if patch < 1 or size % patch:
        raise ValueError(f"{name}={patch} must be a positive divisor of the {what} ({size})")


class PatchEmbed(nnx.Module):
    """image `[B, H, W, C]` -> patch features `[B, H/P, W/P, D]`.

    Args:
      in_channels: C.
      d_model: D.
      patch_size: P (square patches).
    """

    def __init__(self, in_channels: int, d_model: int, patch_size: int, *,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nnx.Conv(in_channels, d_model, (patch_size, patch_size),
                             strides=patch_size, padding="VALID", dtype=dtype, rngs=rngs)

    def __call__(self, image: Array) -> Array:
        if image.ndim != 4 or image.shape[-1] != self.in_channels:
            raise ValueError(f"image must be [batch, height, width, {self.in_channels}], "
                             f"got shape {image.shape}")
        _check_divides("patch_size", image.shape[1], self.patch_size, "image height")
        _check_divides("patch_size", image.shape[2], self.patch_size, "image width")
        return self.proj(image)

    @staticmethod
    def tokens(features: Array) -> Array:
        """`[B, h, w, D]` -> `[B, h * w, D]`, raster order."""
        b, h, w, d = features.shape
        return features.reshape(b, h * w, d)


class TubeletEmbed(nnx.Module):
    """clip `[B, T, H, W, C]` -> tokens `[B, T/t, H/P * W/P, D]` (time-major).

    Args:
      in_channels: C.
      d_model: D.
      patch_size: P (square patches).
      tubelet_frames: t, frames per tubelet (1: each frame embedded on its own).
    """

    def __init__(self, in_channels: int, d_model: int, patch_size: int, *,
                 tubelet_frames: int = 1, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if patch_size < 1 or tubelet_frames < 1:
            raise ValueError(f"patch_size and tubelet_frames must be >= 1, got {patch_size} "
                             f"and {tubelet_frames}")
        self.patch_size, self.tubelet_frames = patch_size, tubelet_frames
        self.in_channels = in_channels
        kernel = (tubelet_frames, patch_size, patch_size)
        self.proj = nnx.Conv(in_channels, d_model, kernel, strides=kernel, padding="VALID",
                             dtype=dtype, rngs=rngs)

    def __call__(self, clip: Array) -> Array:
        if clip.ndim != 5 or clip.shape[-1] != self.in_channels:
            raise ValueError(f"clip must be [batch, frames, height, width, {self.in_channels}], "
                             f"got shape {clip.shape}")
        _check_divides("tubelet_frames", clip.shape[1], self.tubelet_frames, "number of frames")
        _check_divides("patch_size", clip.shape[2], self.patch_size, "frame height")
        _check_divides("patch_size", clip.shape[3], self.patch_size, "frame width")
        x = self.proj(clip)  # [B, T/t, H/P, W/P, D]
        b, t, h, w, d = x.shape
        return x.reshape(b, t, h * w, d)
