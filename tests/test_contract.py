"""The attention contract (DESIGN.md), checked for every registered mechanism from its entry alone.

Everything a test needs comes from `registry.get(name)`: the function, its dense pattern or its
reference function, the layout and mask kind, the capabilities, the options and small example
inputs. A mechanism added to the registry is tested here without editing this file (a new layout
needs its checks added: the tests dispatch on `entry.layout`).

Layouts: 'sequence' (`[B, T, N, H]`) runs every check below; 'image' (`[B, H, W, N, Hd]` feature
maps, MaxViT block and grid attention, mask kind 'none') runs the oracle (pattern + the entry's
own bias over the raster tokens), jit, bfloat16 and dropout checks, and checks that a mask, causal
or mismatched maps are refused and that `MultiHeadAttention` (a sequence module) rejects it.
'video' (`[B, T, S, N, H]` clips, mask kind 'frame': a frame mask `[B, T]` in place of the key
padding mask, `mask` refused) runs every check but bias, cache and the module's: the oracle over
the T*S time-major tokens, padded frames, frame-causality by gradients, jit, bfloat16, dropout.

Every mechanism, on its example inputs (float32, a padded key mask):
- equals its oracle, forward and gradients: `dense.attention(q, k, v, mask=pattern)`, or the
  entry's reference function where the mechanism is not a masked dense attention;
- takes an additive bias where it says so (against a float64 NumPy softmax);
- returns zeros on fully masked query rows (finite values where the entry says rows are not
  zeroed), with finite gradients; gives no gradient to padded keys and values;
- is causal by gradients; is the same with and without jit; runs on bfloat16 inputs with float32
  statistics; handles Tq != Tk, dropout and a key/value cache exactly where its entry says it can;
- and its Flax module rejects unknown or missing options when it is built.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx.attention import dense, registry
from attnx.layers.attention import MultiHeadAttention, init_cache

# Example shapes per layout (the checks below are written for these layouts).
SHAPES = {"sequence": dict(batch=2, length=20, heads=2, head_dim=8),
          "image": dict(batch=2, image_size=(4, 6), heads=2, head_dim=8),
          "video": dict(batch=2, clip_size=(4, 6), heads=2, head_dim=8)}
KV_LENGTH = 12  # keys of the Tq != Tk check
ATOL = RTOL = 1e-5
BF16_ATOL = 3e-2


@dataclasses.dataclass
class Case:
    """One mechanism's entry, example inputs and jitted `(out, grads)` of it and of its oracle."""

    entry: registry.Mechanism
    example: registry.Example
    call: Callable[..., jax.Array]  # (operands, key_mask, causal, **extra) -> out
    oracle: Callable[..., jax.Array]
    value_and_grads: Callable[..., Any]  # jitted (operands, key_mask, cotangent, causal)
    oracle_value_and_grads: Callable[..., Any]

    @property
    def operands(self) -> tuple[jax.Array, ...]:
        ex = self.example
        return self.entry.operands(ex.q, ex.k, ex.v)


def _out_shape(example: registry.Example) -> tuple[int, ...]:
    """The output shape: q's, with v's feature size (`[B, Tq, N, Hv]` / `[B, H, W, N, Hv]`)."""
    return example.q.shape[:-1] + example.v.shape[-1:]


def _tokens(x: jax.Array) -> jax.Array:
    """A feature map `[B, H, W, N, Hd]` as raster tokens `[B, H*W, N, Hd]` (a clip
    `[B, T, S, N, H]` as time-major tokens `[B, T*S, N, H]`)."""
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _make_case(entry: registry.Mechanism, example: registry.Example) -> Case:
    fn, reference = entry.fn, entry.reference_fn

    def call(operands, key_mask, causal, **extra):
        return fn(*operands, **entry.mask_inputs(key_mask), causal=causal,
                  **example.options, **example.inputs, **extra)

    def oracle(operands, key_mask, causal):
        kwargs = dict(**entry.mask_inputs(key_mask), causal=causal, **example.options,
                      **example.inputs)
        if reference is not None:
            return reference(*operands, **kwargs)
        q, v = operands[0], operands[-1]
        k = q if entry.shared_qk else operands[1]
        allowed = entry.pattern_fn(q, k, **kwargs)
        bias = None if entry.bias_fn is None else entry.bias_fn(q, k, **kwargs)
        if entry.layout in ("image", "video"):  # dense attention over the H*W (T*S) tokens
            out = dense.attention(_tokens(q), _tokens(k), _tokens(v), mask=allowed, bias=bias)
            return out.reshape(q.shape[:-1] + v.shape[-1:])
        return dense.attention(q, k, v, mask=allowed, bias=bias)

    def with_grads(f):
        def run(operands, key_mask, cotangent, causal):
            out, pullback = jax.vjp(lambda *xs: f(xs, key_mask, causal), *operands)
            return out, pullback(cotangent)

        return jax.jit(run, static_argnames="causal")

    return Case(entry, example, call, oracle, with_grads(call), with_grads(oracle))


@pytest.fixture(scope="module", params=registry.names())
def case(request) -> Case:
    entry = registry.get(request.param)
    if entry.layout not in SHAPES:
        pytest.fail(f"tests/test_contract.py has no checks for layout {entry.layout!r} "
                    f"(mechanism {entry.name!r}); layouts with checks: {list(SHAPES)}")
    example = entry.example(jax.random.key(0), **SHAPES[entry.layout])
    return _make_case(entry, example)


@pytest.fixture(scope="module")
def cotangent(case) -> jax.Array:
    return jax.random.normal(jax.random.key(1), _out_shape(case.example))


def _per_key(mask: jax.Array, like: jax.Array) -> jax.Array:
    """A `[B, Tk]` mask (a frame mask in the video layout) broadcastable against `like`."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - 2))


def _close(actual, expected, atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                               atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- the entry


def test_entry_agrees_with_its_function(case):
    entry = case.entry
    parameters = inspect.signature(entry.fn).parameters
    keyword = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert {"mask", "causal", "dropout_rate", "dropout_rng"} <= keyword
    assert set(entry.options) <= keyword, sorted(set(entry.options) - keyword)
    assert entry.supports_bias == ("bias" in keyword)
    assert entry.needs_rng == ("rng" in keyword)
    assert entry.global_projections == ({"global_mask", "global_qkv"} <= keyword)
    assert (entry.relative_bias_option is not None) == ("bias_table" in keyword)
    assert entry.relative_bias_option in entry.options + (None,)
    if entry.relative_bias_option is not None:
        assert entry.bias_fn is not None  # the oracle adds the same bias
    entry.check_options(case.example.options)
    for preset in entry.presets:  # the presets an entry lists are complete
        entry.check_options(entry.preset(preset, length=1024))
        entry.check_options(entry.preset(preset, length=1024, causal=True))
    assert entry.attention_keys(case.example.options, 1024, False) > 0


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("causal", [False, True])
def test_equals_its_oracle_forward_and_gradients(case, cotangent, causal):
    if causal and not case.entry.supports_causal:
        pytest.skip(f"{case.entry.name} does not support causal")
    args = (case.operands, case.example.key_mask, cotangent)
    out, grads = case.value_and_grads(*args, causal=causal)
    want, want_grads = case.oracle_value_and_grads(*args, causal=causal)
    assert out.shape == _out_shape(case.example)
    assert out.dtype == case.example.q.dtype
    _close(out, want)
    for grad, want_grad in zip(grads, want_grads):
        assert np.abs(np.asarray(want_grad)).max() > 1e-3  # the comparison is not of zeros
        _close(grad, want_grad)


def _numpy_attention(q, k, v, allowed, bias):
    """float64 softmax attention `[B, Tq, N, H]` over the boolean pattern `[B, N, Tq, Tk]`."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1]) + np.asarray(bias)
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(-1, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
    return np.einsum("bnqk,bknh->bqnh", weights, v)


def test_dense_oracle_matches_numpy():
    ex = registry.get("dense").example(jax.random.key(2), **SHAPES["sequence"])
    bias = jax.random.normal(jax.random.key(3), (2, 2, 20, 20))
    mask = ex.key_mask[:, None, None, :] & (jax.random.uniform(jax.random.key(4), (2, 2, 20, 20))
                                            < 0.7)
    mask = mask.at[0, 1, 4].set(False)  # a row with no key
    allowed = np.asarray(mask) & np.tril(np.ones((20, 20), bool))
    out = dense.attention(ex.q, ex.k, ex.v, mask=mask, bias=bias, causal=True)
    _close(out, _numpy_attention(ex.q, ex.k, ex.v, allowed, bias))
    assert np.all(np.asarray(out)[0, 4, 1] == 0)


def test_additive_bias(case):
    entry, ex = case.entry, case.example
    if not entry.supports_bias:
        pytest.skip(f"{entry.name} takes no bias (its signature has none either)")
    bias = 2.0 * jax.random.normal(jax.random.key(5), (ex.q.shape[0], ex.q.shape[2],
                                                       ex.q.shape[1], ex.k.shape[1]))
    out = jax.jit(lambda b: case.call(case.operands, ex.key_mask, True, bias=b))(bias)
    allowed = entry.pattern_fn(ex.q, ex.k, mask=entry.mask_argument(ex.key_mask), causal=True,
                               **ex.options, **ex.inputs)
    _close(out, _numpy_attention(ex.q, ex.k, ex.v, np.asarray(allowed), bias))


# ----------------------------------------------------------------------------- masking


def _needs_mask(case: Case) -> None:
    if case.entry.mask_kind == "none":
        pytest.skip(f"{case.entry.name} takes no mask (mask kind 'none')")


def test_takes_no_mask_where_declared(case):
    entry, ex = case.entry, case.example
    if entry.mask_kind not in ("none", "frame"):
        pytest.skip(f"{entry.name} takes a {entry.mask_kind!r} mask")
    assert entry.mask_argument(ex.key_mask) is None
    with pytest.raises(ValueError, match="mask"):
        entry.fn(*case.operands, mask=jnp.ones(ex.key_mask.shape, bool), **ex.options,
                 **ex.inputs)


def test_fully_masked_rows(case, cotangent):
    _needs_mask(case)
    key_mask = case.example.key_mask.at[1].set(False)  # every key of row 1 is padding
    out, grads = case.value_and_grads(case.operands, key_mask, cotangent, causal=False)
    assert np.all(np.isfinite(np.asarray(out)))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    if case.entry.zero_masked_rows:
        assert np.all(np.asarray(out)[1] == 0)
        assert np.abs(np.asarray(out)[0]).max() > 0


def test_padded_keys_are_ignored(case, cotangent):
    _needs_mask(case)
    ex = case.example
    real = np.asarray(ex.key_mask)
    assert not real.all()
    # Cotangents at real query rows only: what padded rows return is not part of the contract.
    real_cotangent = cotangent * _per_key(real, cotangent)
    out, grads = case.value_and_grads(case.operands, ex.key_mask, real_cotangent, causal=False)
    assert np.all(np.asarray(grads[-1])[~real] == 0)  # the values of padded keys
    # Garbage in the padded keys' inputs changes no real row.
    noise = 100 * jax.random.normal(jax.random.key(6), ex.v.shape)
    garbage = tuple(jnp.where(_per_key(real, x), x, noise) for x in case.operands)
    changed, _ = case.value_and_grads(garbage, ex.key_mask, real_cotangent, causal=False)
    _close(np.asarray(changed)[real], np.asarray(out)[real])


def test_causal_by_gradients(case, cotangent):
    if not case.entry.supports_causal:
        with pytest.raises(ValueError, match="causal"):
            case.call(case.operands, case.example.key_mask, True)
        return
    t = case.example.q.shape[1]
    for i in (2, t // 2, t - 1):
        one_query = cotangent * _per_key((jnp.arange(t) == i)[None], cotangent)
        _, grads = case.value_and_grads(case.operands, case.example.key_mask, one_query,
                                        causal=True)
        for grad in grads[1:] if not case.entry.shared_qk else grads:
            grad = np.abs(np.asarray(grad))
            assert np.all(grad[:, i + 1:] == 0), f"query {i} depends on a later key"
            assert grad[:, : i + 1].max() > 0


# ----------------------------------------------------------------------------- execution


def test_same_with_and_without_jit(case, cotangent):
    args = (case.operands, case.example.key_mask)
    causal = case.entry.supports_causal
    jitted, _ = case.value_and_grads(*args, cotangent, causal=causal)
    _close(case.call(*args, causal), jitted, atol=1e-6, rtol=1e-6)


def test_bfloat16_inputs_float32_statistics(case, cotangent):
    ex = case.example
    rounded = tuple(x.astype(jnp.bfloat16) for x in case.operands)
    inputs = {k: tuple(x.astype(jnp.bfloat16) for x in v) if k == "global_qkv" else v
              for k, v in ex.inputs.items()}
    bf16_case = _make_case(case.entry, dataclasses.replace(ex, inputs=inputs))
    out = jax.jit(bf16_case.call, static_argnums=2)(rounded, ex.key_mask, False)
    assert out.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(out, np.float32)))
    # float32 on the same (rounded) inputs: only the output rounding and bf16 matmuls differ.
    upcast = tuple(x.astype(jnp.float32) for x in rounded)
    want, _ = case.value_and_grads(upcast, ex.key_mask, cotangent, causal=False)
    _close(out, want, atol=BF16_ATOL, rtol=0)


def test_query_and_key_lengths_may_differ_exactly_where_declared(case):
    entry = case.entry
    ex = entry.example(jax.random.key(7), kv_length=KV_LENGTH, **SHAPES[entry.layout])
    short = _make_case(entry, ex)
    if not entry.supports_cross_length:
        q, k, v = case.example.q, case.example.k, case.example.v
        kv_length = KV_LENGTH if entry.layout == "sequence" else 2  # half the rows / frames
        with pytest.raises(ValueError):
            entry.fn(*entry.operands(q, k[:, :kv_length], v[:, :kv_length]),
                     **case.example.options, **case.example.inputs)
        return
    cot = jax.random.normal(jax.random.key(8), _out_shape(ex))
    out, grads = short.value_and_grads(short.operands, ex.key_mask, cot, causal=True)
    want, want_grads = short.oracle_value_and_grads(short.operands, ex.key_mask, cot, causal=True)
    assert out.shape == _out_shape(ex)
    _close(out, want)
    for grad, want_grad in zip(grads, want_grads):
        _close(grad, want_grad)


def test_dropout_exactly_where_declared(case):
    entry, ex = case.entry, case.example
    key = jax.random.key(9)
    if not entry.supports_dropout:
        with pytest.raises(ValueError, match="dropout"):
            case.call(case.operands, ex.key_mask, False, dropout_rate=0.1, dropout_rng=key)
        return
    dropped = jax.jit(lambda xs, rng: case.call(xs, ex.key_mask, False, dropout_rate=0.5,
                                                dropout_rng=rng))
    first, again = dropped(case.operands, key), dropped(case.operands, key)
    plain = case.call(case.operands, ex.key_mask, False)
    assert np.all(np.isfinite(np.asarray(first)))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert np.abs(np.asarray(first) - np.asarray(plain)).max() > 1e-2


# ----------------------------------------------------------------------------- the Flax module


def _sequence_module(case: Case) -> None:
    """Skip unless the mechanism runs in MultiHeadAttention (after checking that it refuses it)."""
    entry = case.entry
    if entry.layout != "sequence":
        with pytest.raises(ValueError, match="sequence"):
            MultiHeadAttention(16, 2, mechanism=entry.name, options=case.example.options,
                               rngs=nnx.Rngs(0))
        pytest.skip(f"{entry.name} ({entry.layout!r} layout) runs in its own module")


def test_module_checks_options_when_built(case):
    _sequence_module(case)
    entry, ex = case.entry, case.example
    build = lambda **kw: MultiHeadAttention(16, 2, mechanism=entry.name, rngs=nnx.Rngs(0), **kw)
    build(options=ex.options)
    with pytest.raises(ValueError, match="no_such_option") as error:
        build(options={**ex.options, "no_such_option": 1})
    assert all(name in str(error.value) for name in entry.options)
    required = [name for name in entry.options if name not in entry.option_defaults()]
    for name in required:
        with pytest.raises(ValueError, match=name):
            build(options={k: v for k, v in ex.options.items() if k != name})
    if not entry.supports_dropout:
        with pytest.raises(ValueError, match="attention_dropout"):
            build(options=ex.options, attention_dropout=0.1)


def test_module_cache_exactly_where_declared(case):
    _sequence_module(case)
    entry = case.entry
    layer = MultiHeadAttention(16, 2, mechanism=entry.name, options=case.example.options,
                               rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(10), (2, 6, 16))
    cache = init_cache(2, 6, 2, 8)
    if not entry.supports_cache:
        with pytest.raises(ValueError, match="key/value cache"):
            layer(x, cache=cache)
        return
    first, cache = layer(x[:, :4], cache=cache)
    second, _ = layer(x[:, 4:], cache=cache)
    _close(jnp.concatenate([first, second], axis=1), layer(x, causal=True))


def test_incremental_decoding_exactly_where_declared(case):
    """`decoding`: prefill equals the causal attention over the prompt; 'exact' steps equal its
    later rows; 'rule' steps are checked against their rule's reference in the mechanism's own
    tests (here: shapes, finiteness and the advancing index). Others refuse to decode."""
    _sequence_module(case)
    entry, ex = case.entry, case.example
    layer = MultiHeadAttention(16, 2, mechanism=entry.name, options=ex.options,
                               rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(11), (2, 8, 16))
    if not layer.can_decode:
        assert entry.decoding is None and not entry.supports_cache
        with pytest.raises(ValueError, match="cannot decode incrementally"):
            layer.prefill(x, 8)
        return
    if entry.decoding is None:
        return  # a plain key/value cache: test_module_cache_exactly_where_declared
    prompt_out, cache = layer.prefill(x[:, :5], 8)
    _close(prompt_out, layer(x[:, :5], causal=True))
    steps = [prompt_out]
    for t in range(5, 8):
        out, cache = layer.decode_step(x[:, t:t + 1], cache)
        steps.append(out)
    assert int(cache["index"]) == 8
    decoded = jnp.concatenate(steps, axis=1)
    assert decoded.shape == (2, 8, 16) and bool(jnp.isfinite(decoded).all())
    if entry.decoding == "exact":
        _close(decoded, layer(x, causal=True))
