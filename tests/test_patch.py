"""Patch and tubelet embeddings against a plain reshape-and-matmul reference."""

import numpy as np
import pytest
from flax import nnx

from attnx.layers.patch import PatchEmbed, TubeletEmbed


def _reference_patches(image: np.ndarray, kernel: np.ndarray, bias: np.ndarray, p: int):
    """Loop reference: token (i, j) = flattened patch (i, j) @ kernel + bias."""
    b, h, w, c = image.shape
    out = np.zeros((b, h // p, w // p, kernel.shape[-1]), np.float64)
    for i in range(h // p):
        for j in range(w // p):
            patch = image[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(b, -1)
            out[:, i, j] = patch @ kernel.reshape(-1, kernel.shape[-1]) + bias
    return out


def test_patch_embed_is_a_linear_map_of_each_patch():
    embed = PatchEmbed(3, 5, 2, rngs=nnx.Rngs(0))
    image = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    out = np.asarray(embed(image))
    assert out.shape == (2, 2, 3, 5)
    expected = _reference_patches(image, np.asarray(embed.proj.kernel[...]),
                                  np.asarray(embed.proj.bias[...]), 2)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    tokens = PatchEmbed.tokens(out)
    np.testing.assert_array_equal(tokens[:, 4], out[:, 1, 1])  # raster order: row 1, column 1


def test_tubelet_embed_with_one_frame_embeds_frames_independently():
    embed = TubeletEmbed(1, 4, 2, tubelet_frames=1, rngs=nnx.Rngs(0))
    clip = np.random.default_rng(1).normal(size=(2, 3, 4, 4, 1)).astype(np.float32)
    out = np.asarray(embed(clip))
    assert out.shape == (2, 3, 4, 4)  # [B, T, S, D], time-major
    kernel = np.asarray(embed.proj.kernel[...])[0]  # [P, P, C, D]
    for t in range(3):
        frame = _reference_patches(clip[:, t], kernel, np.asarray(embed.proj.bias[...]), 2)
        np.testing.assert_allclose(out[:, t], frame.reshape(2, 4, 4), rtol=1e-5, atol=1e-5)


def test_tubelets_of_two_frames_sum_both_frames_patches():
    embed = TubeletEmbed(1, 3, 2, tubelet_frames=2, rngs=nnx.Rngs(0))
    clip = np.random.default_rng(2).normal(size=(1, 4, 2, 2, 1)).astype(np.float32)
    out = np.asarray(embed(clip))
    assert out.shape == (1, 2, 1, 3)
    kernel = np.asarray(embed.proj.kernel[...])  # [2, P, P, C, D]
    expected = (clip[0, 2:4].reshape(-1) @ kernel.reshape(-1, 3)) + np.asarray(embed.proj.bias[...])
    np.testing.assert_allclose(out[0, 1, 0], expected, rtol=1e-5, atol=1e-5)


def test_shapes_that_do_not_divide_are_refused():
    embed = PatchEmbed(3, 4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"patch_size=3 must be a positive divisor of the image "
                                         r"height \(4\)"):
        embed(np.zeros((1, 4, 6, 3), np.float32))
    with pytest.raises(ValueError, match=r"image must be \[batch, height, width, 3\]"):
        embed(np.zeros((1, 6, 6, 1), np.float32))
    tubelet = TubeletEmbed(1, 4, 2, tubelet_frames=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tubelet_frames=2 must be a positive divisor of the "
                                         "number of frames"):
        tubelet(np.zeros((1, 3, 4, 4, 1), np.float32))
