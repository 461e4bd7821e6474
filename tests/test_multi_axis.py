"""MaxViT block and grid attention (`attnx/attention/multi_axis.py`): partitions, the relative
position bias (key minus query), the limiting cases, grid/block duality, locality and errors.

The contract checks (oracle on the pattern + bias, jit, bfloat16, dropout) run from the registry
entries in tests/test_contract.py; these are the mechanism's own properties. Everything runs
eagerly on tiny maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnx.attention import dense, multi_axis

B, N, HD = 2, 2, 4


def _maps(h: int, w: int, seed: int = 0, heads: int = N):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v = (jax.random.normal(key, (B, h, w, heads, HD)) for key in keys[:3])
    return q, k, v, keys[3]


def _tokens(x):
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


def _loop_bias(table: np.ndarray, size: int) -> np.ndarray:
    """bias[:, (i, j), (x, y)] = table[:, x - i + P - 1, y - j + P - 1], written as loops."""
    out = np.zeros((table.shape[0], size * size, size * size), table.dtype)
    for i in range(size):
        for j in range(size):
            for x in range(size):
                for y in range(size):
                    out[:, i * size + j, x * size + y] = table[:, x - i + size - 1,
                                                               y - j + size - 1]
    return out


# ----------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("h, w, p", [(4, 6, 2), (6, 6, 3), (4, 4, 4), (3, 5, 1)])
def test_partitions_round_trip(h, w, p):
    x = jax.random.normal(jax.random.key(0), (B, h, w, N, HD))
    windows = multi_axis.block_partition(x, p)
    groups = multi_axis.grid_partition(x, p)
    assert windows.shape == groups.shape == (B * (h // p) * (w // p), p * p, N, HD)
    np.testing.assert_array_equal(multi_axis.block_unpartition(windows, p, h, w), x)
    np.testing.assert_array_equal(multi_axis.grid_unpartition(groups, p, h, w), x)


def test_partition_contents():
    x = jnp.arange(4 * 6).reshape(1, 4, 6)  # raster index of each token
    # Block 1 (second of the top row of 2 x 2 windows) holds rows 0-1, columns 2-3.
    np.testing.assert_array_equal(multi_axis.block_partition(x, 2)[1], [2, 3, 8, 9])
    # Grid of 2 x 2 groups: strides 4/2 = 2 and 6/2 = 3; group (0, 1) holds (0,1), (0,4),
    # (2,1), (2,4).
    np.testing.assert_array_equal(multi_axis.grid_partition(x, 2)[1], [1, 4, 13, 16])


# ----------------------------------------------------------------------------- bias indexing


def test_bias_indexing_hand_computed_2x2():
    table = jnp.array([[[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]]])  # [1, 3, 3]
    # Tokens in raster order: 0 = (0,0), 1 = (0,1), 2 = (1,0), 3 = (1,1); entry (query, key) is
    # table[x - i + 1, y - j + 1].
    want = np.array([[11, 12, 21, 22],
                     [10, 11, 20, 21],
                     [1, 2, 11, 12],
                     [0, 1, 10, 11]], np.float32)
    np.testing.assert_array_equal(multi_axis.relative_position_bias(table, 2)[0], want)
    # block_attention adds it: zero queries leave only the bias in the logits.
    v = jax.random.normal(jax.random.key(1), (1, 2, 2, 1, 3))
    q = jnp.zeros((1, 2, 2, 1, 3))
    out = multi_axis.block_attention(q, q, v, window=2, bias_table=table / 10)
    weights = jax.nn.softmax(want / 10, axis=-1)
    _close(_tokens(out)[0, :, 0], weights @ np.asarray(_tokens(v)[0, :, 0]))


@pytest.mark.parametrize("size", [1, 3])
def test_bias_matches_loops(size):
    table = np.asarray(jax.random.normal(jax.random.key(2), (N, 2 * size - 1, 2 * size - 1)))
    _close(multi_axis.relative_position_bias(jnp.asarray(table), size), _loop_bias(table, size))


# ----------------------------------------------------------------------------- limiting cases


@pytest.mark.parametrize("function, option", [(multi_axis.block_attention, "window"),
                                              (multi_axis.grid_attention, "grid")])
def test_partition_of_the_whole_map_is_full_attention_with_the_full_table(function, option):
    h = w = 3
    q, k, v, key = _maps(h, w)
    table = jax.random.normal(key, (N, 2 * h - 1, 2 * h - 1))  # the full (2H-1)^2 table
    bias = _loop_bias(np.asarray(table), h)[None]

    def ours(q, k, v, table):
        return function(q, k, v, bias_table=table, **{option: h})

    def full(q, k, v, table):
        bias = multi_axis.relative_position_bias(table, h)[None]
        return dense.attention(_tokens(q), _tokens(k), _tokens(v), bias=bias).reshape(q.shape)

    _close(ours(q, k, v, table),
           dense.attention(_tokens(q), _tokens(k), _tokens(v), bias=bias).reshape(q.shape))
    loss = lambda f: lambda *xs: jnp.sum(jnp.sin(f(*xs)))
    grads = jax.grad(loss(ours), argnums=(0, 1, 2, 3))(q, k, v, table)
    want = jax.grad(loss(full), argnums=(0, 1, 2, 3))(q, k, v, table)
    for grad, want_grad in zip(grads, want):
        assert np.abs(np.asarray(want_grad)).max() > 1e-3
        _close(grad, want_grad)


@pytest.mark.parametrize("function, option", [(multi_axis.block_attention, "window"),
                                              (multi_axis.grid_attention, "grid")])
def test_partitions_of_one_token_return_their_own_value(function, option):
    q, k, v, key = _maps(4, 6)
    table = jax.random.normal(key, (N, 1, 1))
    _close(function(q, k, v, bias_table=table, **{option: 1}), v, tol=1e-6)


def _permute(x, g):
    """Grid groups of `x` `[B, H, W, ...]` become contiguous G x G blocks: y[a*G + i, b*G + j]
    = x[i*H/G + a, j*W/G + b]."""
    b, h, w, *rest = x.shape
    y = x.reshape(b, g, h // g, g, w // g, *rest)
    return jnp.moveaxis(y, (1, 3), (2, 4)).reshape(x.shape)


def _unpermute(y, g):
    b, h, w, *rest = y.shape
    x = y.reshape(b, h // g, g, w // g, g, *rest)
    return jnp.moveaxis(x, (1, 3), (2, 4)).reshape(y.shape)


def test_grid_attention_is_block_attention_on_the_permuted_map():
    g, h, w = 2, 4, 6
    q, k, v, key = _maps(h, w)
    table = jax.random.normal(key, (N, 2 * g - 1, 2 * g - 1))
    np.testing.assert_array_equal(_unpermute(_permute(q, g), g), q)
    grid = multi_axis.grid_attention(q, k, v, grid=g, bias_table=table)
    block = multi_axis.block_attention(*(_permute(x, g) for x in (q, k, v)), window=g,
                                       bias_table=table)
    _close(grid, _unpermute(block, g), tol=1e-6)
    # The permutation also carries the grid groups onto the blocks.
    np.testing.assert_array_equal(multi_axis.grid_partition(q, g),
                                  multi_axis.block_partition(_permute(q, g), g))


# ----------------------------------------------------------------------------- locality


@pytest.mark.parametrize("function, option", [(multi_axis.block_attention, "window"),
                                              (multi_axis.grid_attention, "grid")])
def test_locality_by_gradients(function, option):
    h, w, p = 4, 6, 2
    q, k, v, key = _maps(h, w)
    table = jax.random.normal(key, (N, 2 * p - 1, 2 * p - 1))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    for r, c in [(0, 0), (1, 4), (3, 5)]:
        grads = jax.grad(lambda q, k, v: function(q, k, v, bias_table=table, **{option: p})
                         [:, r, c].sum(), argnums=(1, 2))(q, k, v)
        if option == "window":  # the same P x P block
            same = (rows // p == r // p) & (cols // p == c // p)
        else:  # the same stride class: rows r mod H/G, columns c mod W/G
            same = (rows % (h // p) == r % (h // p)) & (cols % (w // p) == c % (w // p))
        for grad in grads:
            reach = np.abs(np.asarray(grad)).max(axis=(0, 3, 4)) > 0
            np.testing.assert_array_equal(reach, same)


# ----------------------------------------------------------------------------- resizing


def test_resize_bias_table():
    table = jax.random.normal(jax.random.key(3), (N, 3, 3))
    assert multi_axis.resize_bias_table(table, 2) is table
    resized = multi_axis.resize_bias_table(table, 4)
    assert resized.shape == (N, 7, 7)
    _close(multi_axis.resize_bias_table(jnp.full((N, 3, 3), 0.5), 4), jnp.full((N, 7, 7), 0.5))
    # Bilinear: the resized table stays within the original's range, head by head.
    assert np.all(np.asarray(resized.max((1, 2))) <= np.asarray(table.max((1, 2))) + 1e-6)
    q, k, v, _ = _maps(4, 4)
    multi_axis.block_attention(q, k, v, window=4, bias_table=resized)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_sizes():
    q, k, v, _ = _maps(4, 6)
    with pytest.raises(ValueError, match=r"window=4 must divide .* H=4 and width W=6"):
        multi_axis.block_attention(q, k, v, window=4)
    with pytest.raises(ValueError, match=r"grid=4 must divide .* H=4 and width W=6"):
        multi_axis.grid_attention(q, k, v, grid=4)
    with pytest.raises(ValueError, match="window=3"):
        multi_axis.block_partition(q, 3)
    with pytest.raises(ValueError, match="grid must be a positive int"):
        multi_axis.grid_partition(q, 0)
    with pytest.raises(ValueError, match=r"bias_table must be \[heads, 3, 3\]"):
        multi_axis.block_attention(q, k, v, window=2, bias_table=jnp.zeros((N, 5, 5)))
    with pytest.raises(ValueError, match="q must be a feature map"):
        multi_axis.block_attention(_tokens(q), _tokens(k), _tokens(v), window=2)
    with pytest.raises(ValueError, match="must agree"):
        multi_axis.grid_attention(q, k[:, :2], v[:, :2], grid=2)
    with pytest.raises(ValueError, match="mask must be None"):
        multi_axis.block_attention(q, k, v, window=2, mask=jnp.ones((B, 24), bool))
    with pytest.raises(ValueError, match=r"windows must be \[B \* 2 \* 3, 4"):
        multi_axis.block_unpartition(jnp.zeros((5, 4)), 2, 4, 6)
