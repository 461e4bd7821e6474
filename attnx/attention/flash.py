"""Memory-efficient exact attention (FlashAttention): a Pallas kernel and an XLA blockwise path.

Both implementations compute exactly `dense.attention` on the pattern `pattern()` returns, without
ever holding a `[Tq, Tk]` score matrix: queries and keys are processed in blocks with an online
softmax (running max `m` and normaliser `l` in float32), and only the output and the per-row
log-sum-exp are saved for the backward pass, which recomputes the scores block by block
(FlashAttention-2, Dao 2023).

- `implementation='pallas'`: `pl.pallas_call` kernels for the forward pass and for the backward
  pass (one kernel for dk/dv, gridded over key blocks, one for dq, gridded over query blocks),
  written for GPUs through Triton. On CPU they run in Pallas interpret mode (slow; for tests).
- `implementation='xla'`: the same algorithm as nested loops in plain JAX, blocking queries and
  keys in the forward and the backward pass, so temporary memory is linear in the sequence length.
- `implementation='auto'`: Pallas on GPU, XLA elsewhere.

Layout is BTNH: q `[B, Tq, N, H]`, k `[B, Tk, N, H]`, v `[B, Tk, N, Hv]`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from attnx.attention import _common, dense

Array = jax.Array
Implementation = Literal["auto", "pallas", "xla"]
# `(q_segment_ids [B, Tq], kv_segment_ids [B, Tk], kv_valid [B, Tk])`, int32, each possibly None.
Masks = tuple[Array | None, Array | None, Array | None]

IMPLEMENTATIONS = ("auto", "pallas", "xla")
# Masked logits are set to MASK_VALUE; the running max starts at half of it. A row that has seen
# only masked keys therefore gets exp(scale * (MASK_VALUE - _M_INIT)) = 0 weight and keeps l = 0,
# so fully masked rows come out as zeros without a separate select on the probabilities.
_M_INIT = _common.MASK_VALUE / 2
# Smallest block Triton's dot accepts along any dimension.
_MIN_PALLAS_BLOCK = 16
_PRECISION = lax.Precision.HIGHEST  # exact float32 dots (no TF32 on GPU); no-op for bfloat16


@dataclasses.dataclass(frozen=True)
class _Static:
    """Static (hashable) settings of one call, after validation and block clamping."""

    implementation: Literal["pallas", "xla"]
    scale: float
    causal: bool
    block_q: int
    block_k: int
    interpret: bool


# ------------------------------------------------------------------------------------------------
# Shared block math (works on `[..., bq, bk]` score blocks, batched or not).


def _block_mask(
    q_pos: Array,
    k_pos: Array,
    q_seg: Array | None,
    kv_seg: Array | None,
    kv_valid: Array | None,
    causal: bool,
) -> Array | None:
    """Boolean `[..., bq, bk]` mask of one block; None when nothing is masked.

    q_pos `[bq]` and k_pos `[bk]` are absolute positions; q_seg `[..., bq]`, kv_seg and
    kv_valid `[..., bk]`.
    """
    causal_mask = q_pos[:, None] >= k_pos[None, :] if causal else None
    segment_mask = None if q_seg is None else q_seg[..., :, None] == kv_seg[..., None, :]
    valid_mask = None if kv_valid is None else kv_valid[..., None, :] != 0
    return dense.combine_masks(causal_mask, segment_mask, valid_mask)


def _masked(s: Array, mask: Array | None) -> Array:
    return s if mask is None else jnp.where(mask, s, _common.MASK_VALUE)


def _online_softmax_step(
    s: Array, m_prev: Array, l_prev: Array, scale: float
) -> tuple[Array, Array, Array, Array]:
    """One online-softmax step: unscaled scores `s [..., bq, bk]`, running `m, l [..., bq]`.

    The running max `m` is kept in unscaled units (scale > 0), so the scale is applied inside the
    exponential instead of in a separate pass over the block. Returns `(p, correction, m_next,
    l_next)`: the unnormalised block probabilities and the factor by which the accumulated output
    must be rescaled.
    """
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1))
    correction = jnp.exp(scale * (m_prev - m_next))
    p = jnp.exp(scale * (s - m_next[..., None]))
    l_next = correction * l_prev + jnp.sum(p, axis=-1)
    return p, correction, m_next, l_next


def _finish(acc: Array, m: Array, l: Array, scale: float) -> tuple[Array, Array]:
    """Normalised output `acc / l` (zeros where l == 0) and log-sum-exp (+inf where l == 0)."""
    has_key = l > 0
    inv_l = jnp.where(has_key, 1.0 / jnp.where(has_key, l, 1.0), 0.0)
    lse = jnp.where(has_key, scale * m + jnp.log(jnp.where(has_key, l, 1.0)), jnp.inf)
    return acc * inv_l[..., None], lse


# ------------------------------------------------------------------------------------------------
# XLA blockwise path: nested loops over query and key blocks on BTNH inputs. Blocks are laid out so
# that every matmul takes the `[bq, bk]` score block in XLA's canonical operand position (otherwise
# XLA:CPU transposes that block, the largest operand) and only `[block, H]` operands get transposed.


def _slice_t(x: Array | None, start: Array | int, size: int, axis: int = 1) -> Array | None:
    """Block `[start, start + size)` along `axis` (default: the length axis of BTNH), or None."""
    return None if x is None else lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _bnth(x: Array) -> Array:
    """`[B, T, N, H]` -> `[B, N, T, H]`."""
    return x.transpose(0, 2, 1, 3)


def _bnht(x: Array) -> Array:
    """`[B, T, N, H]` -> `[B, N, H, T]`."""
    return x.transpose(0, 2, 3, 1)


def _mm(spec: str, a: Array, b: Array) -> Array:
    return jnp.einsum(spec, a, b, precision=_PRECISION, preferred_element_type=jnp.float32)


def _xla_block_mask(i: Array, j: Array, masks: Masks, st: _Static) -> Array | None:
    """Mask `[B, 1, bq, bk]` (or `[bq, bk]`) of query block i against key block j, or None."""
    bq, bk = st.block_q, st.block_k
    q_seg, kv_seg, kv_valid = masks
    q_seg_i = _slice_t(q_seg, i * bq, bq)
    kv_seg_j, kv_valid_j = _slice_t(kv_seg, j * bk, bk), _slice_t(kv_valid, j * bk, bk)
    return _block_mask(i * bq + jnp.arange(bq), j * bk + jnp.arange(bk),
                       None if q_seg_i is None else q_seg_i[:, None],
                       None if kv_seg_j is None else kv_seg_j[:, None],
                       None if kv_valid_j is None else kv_valid_j[:, None], st.causal)


def _causal_k_end(i: Array, st: _Static, nk: int) -> Array | int:
    """Number of key blocks query block i needs (all of them unless causal)."""
    if not st.causal:
        return nk
    return jnp.minimum(nk, ((i + 1) * st.block_q + st.block_k - 1) // st.block_k)


def _xla_forward(q: Array, k: Array, v: Array, masks: Masks, st: _Static) -> tuple[Array, Array]:
    """Blockwise forward: out `[B, Tq, N, Hv]` and log-sum-exp `[B, N, Tq]` (float32)."""
    b, tq, n, _ = q.shape
    hv = v.shape[-1]
    bq, bk = st.block_q, st.block_k
    nk = k.shape[1] // bk

    def query_block(i, carry):
        out, lse = carry
        q_i = _bnth(_slice_t(q, i * bq, bq))  # [B, N, bq, H]

        def key_block(j, state):
            acc, m, l = state
            s = _mm("bnqh,bknh->bnqk", q_i, _slice_t(k, j * bk, bk))
            s = _masked(s, _xla_block_mask(i, j, masks, st))
            p, correction, m, l = _online_softmax_step(s, m, l, st.scale)
            pv = _mm("bnqk,bknh->bnqh", p.astype(v.dtype), _slice_t(v, j * bk, bk))
            return correction[..., None] * acc + pv, m, l

        init = (jnp.zeros((b, n, bq, hv), jnp.float32), jnp.full((b, n, bq), _M_INIT, jnp.float32),
                jnp.zeros((b, n, bq), jnp.float32))
        acc, m, l = lax.fori_loop(0, _causal_k_end(i, st, nk), key_block, init)
        o_i, lse_i = _finish(acc, m, l, st.scale)
        out = lax.dynamic_update_slice_in_dim(out, _bnth(o_i).astype(out.dtype), i * bq, axis=1)
        lse = lax.dynamic_update_slice_in_dim(lse, lse_i, i * bq, axis=2)
        return out, lse

    init = (jnp.zeros((b, tq, n, hv), q.dtype), jnp.zeros((b, n, tq), jnp.float32))
    return lax.fori_loop(0, tq // bq, query_block, init)


def _xla_backward(
    q: Array, k: Array, v: Array, masks: Masks, out: Array, lse: Array, do: Array, st: _Static
) -> tuple[Array, Array, Array]:
    """Blockwise backward: (dq, dk, dv), outer loop over key blocks, inner over query blocks.

    dk and dv of a key block accumulate (transposed, `[B, N, H, bk]`) in the inner loop's carry; dq
    accumulates in float32 in a `[B, Tq, N, H]` buffer updated in place. q and dO are also needed as
    `[H, bq]` blocks, a transpose XLA:CPU does slowly; they are transposed once up front (two
    linear-size copies) rather than once per key block.
    """
    bq, bk = st.block_q, st.block_k
    nq, nk = q.shape[1] // bq, k.shape[1] // bk
    delta = _delta(out, do)
    q_t, do_t = _bnht(q), _bnht(do)  # [B, N, H, Tq]

    def key_block(j, carry):
        dq, dk, dv = carry
        k_j, v_j = _slice_t(k, j * bk, bk), _slice_t(v, j * bk, bk)
        k_t, v_t, k_j = _bnht(k_j), _bnht(v_j), _bnth(k_j)  # [B, N, H, bk], [B, N, bk, H]

        def query_block(i, state):
            dq, dk_t, dv_t = state
            q_i, do_i = _bnth(_slice_t(q, i * bq, bq)), _bnth(_slice_t(do, i * bq, bq))
            q_it, do_it = _slice_t(q_t, i * bq, bq, axis=3), _slice_t(do_t, i * bq, bq, axis=3)
            lse_i = _slice_t(lse, i * bq, bq, axis=2)[..., None]
            delta_i = _slice_t(delta, i * bq, bq, axis=2)[..., None]
            s = _masked(_mm("bnqh,bnhk->bnqk", q_i, k_t), _xla_block_mask(i, j, masks, st))
            p = jnp.exp(st.scale * s - lse_i)
            dv_t = dv_t + _mm("bnhq,bnqk->bnhk", do_it, p.astype(do.dtype))
            ds = (p * (_mm("bnqh,bnhk->bnqk", do_i, v_t) - delta_i)).astype(q.dtype)
            dk_t = dk_t + _mm("bnhq,bnqk->bnhk", q_it, ds)
            dq_i = _bnth(_mm("bnqk,bnkh->bnqh", ds, k_j))
            dq_i = _slice_t(dq, i * bq, bq) + dq_i
            dq = lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=1)
            return dq, dk_t, dv_t

        i_start = (j * bk) // bq if st.causal else 0
        init = (dq, jnp.zeros(k_t.shape, jnp.float32), jnp.zeros(v_t.shape, jnp.float32))
        dq, dk_t, dv_t = lax.fori_loop(i_start, nq, query_block, init)
        dk_j = (dk_t.transpose(0, 3, 1, 2) * st.scale).astype(dk.dtype)  # [B, bk, N, H]
        dv_j = dv_t.transpose(0, 3, 1, 2).astype(dv.dtype)
        dk = lax.dynamic_update_slice_in_dim(dk, dk_j, j * bk, axis=1)
        dv = lax.dynamic_update_slice_in_dim(dv, dv_j, j * bk, axis=1)
        return dq, dk, dv

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k), jnp.zeros_like(v))
    dq, dk, dv = lax.fori_loop(0, nk, key_block, init)
    return (dq * st.scale).astype(q.dtype), dk, dv


def _delta(out: Array, do: Array) -> Array:
    """delta = rowsum(dO * O) `[B, N, Tq]` in float32 (= sum_j P_ij dP_ij)."""
    return jnp.einsum("bqnh,bqnh->bnq", do.astype(jnp.float32), out.astype(jnp.float32),
                      precision=_PRECISION)


# ------------------------------------------------------------------------------------------------
# Pallas kernels. Each program handles one (block, batch, head); refs have the batch and head axes
# squeezed away, so q_ref is `[bq, H]` or `[Tq, H]`, lse_ref `[bq]` or `[Tq]`, and so on.


def _dot(a: Array, b: Array, contract: tuple[int, int]) -> Array:
    """2-D matmul in float32 contracting `a`'s axis contract[0] with `b`'s axis contract[1]."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(a, b, dims, precision=_PRECISION, preferred_element_type=jnp.float32)


def _split_refs(refs: tuple, n_in: int, has_segments: bool, has_valid: bool) -> tuple:
    """(inputs, q_seg_ref, kv_seg_ref, kv_valid_ref, outputs) from a kernel's flat ref list."""
    inputs, rest = refs[:n_in], list(refs[n_in:])
    q_seg_ref = rest.pop(0) if has_segments else None
    kv_seg_ref = rest.pop(0) if has_segments else None
    kv_valid_ref = rest.pop(0) if has_valid else None
    return inputs, q_seg_ref, kv_seg_ref, kv_valid_ref, rest


def _load(ref, index=...) -> Array | None:
    """`ref[index]`, or None for an absent (None) ref."""
    return None if ref is None else ref[index]


def _forward_kernel(*refs, st: _Static, nk: int, has_segments: bool, has_valid: bool) -> None:
    """Output and log-sum-exp of one query block: online softmax over the key blocks it can see."""
    (q_ref, k_ref, v_ref), q_seg_ref, kv_seg_ref, kv_valid_ref, (o_ref, lse_ref) = _split_refs(
        refs, 3, has_segments, has_valid)
    bq, bk = st.block_q, st.block_k
    i = pl.program_id(0)
    q = q_ref[...]
    q_seg = _load(q_seg_ref)
    q_pos = i * bq + jnp.arange(bq)

    def key_block(j, state):
        acc, m, l = state
        ks = pl.ds(j * bk, bk)
        s = _dot(q, k_ref[ks, :], (1, 1))
        mask = _block_mask(q_pos, j * bk + jnp.arange(bk), q_seg, _load(kv_seg_ref, ks),
                           _load(kv_valid_ref, ks), st.causal)
        p, correction, m, l = _online_softmax_step(_masked(s, mask), m, l, st.scale)
        v = v_ref[ks, :]
        return correction[:, None] * acc + _dot(p.astype(v.dtype), v, (1, 0)), m, l

    init = (jnp.zeros(o_ref.shape, jnp.float32), jnp.full((bq,), _M_INIT, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(0, _causal_k_end(i, st, nk), key_block, init)
    o, lse = _finish(acc, m, l, st.scale)
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = lse


def _dkdv_kernel(*refs, st: _Static, nq: int, has_segments: bool, has_valid: bool) -> None:
    """dk, dv of one key block: loop over the query blocks that can see it."""
    inputs, q_seg_ref, kv_seg_ref, kv_valid_ref, (dk_ref, dv_ref) = _split_refs(
        refs, 6, has_segments, has_valid)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
    bq, bk = st.block_q, st.block_k
    j = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    kv_seg, kv_valid = _load(kv_seg_ref), _load(kv_valid_ref)
    k_pos = j * bk + jnp.arange(bk)

    def query_block(i, state):
        dk, dv = state
        qs = pl.ds(i * bq, bq)
        q, do = q_ref[qs, :], do_ref[qs, :]
        s = _dot(q, k, (1, 1))
        mask = _block_mask(i * bq + jnp.arange(bq), k_pos, _load(q_seg_ref, qs), kv_seg, kv_valid,
                           st.causal)
        p = jnp.exp(st.scale * _masked(s, mask) - lse_ref[qs][:, None])
        dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
        ds = p * (_dot(do, v, (1, 1)) - delta_ref[qs][:, None])
        return dk + _dot(ds.astype(q.dtype), q, (0, 0)), dv

    i_start = lax.div(j * bk, bq) if st.causal else 0
    init = (jnp.zeros(dk_ref.shape, jnp.float32), jnp.zeros(dv_ref.shape, jnp.float32))
    dk, dv = lax.fori_loop(i_start, nq, query_block, init)
    dk_ref[...] = (dk * st.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, st: _Static, nk: int, has_segments: bool, has_valid: bool) -> None:
    """dq of one query block: loop over the key blocks it can see."""
    inputs, q_seg_ref, kv_seg_ref, kv_valid_ref, (dq_ref,) = _split_refs(
        refs, 6, has_segments, has_valid)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = inputs
    bq, bk = st.block_q, st.block_k
    i = pl.program_id(0)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    q_seg = _load(q_seg_ref)
    q_pos = i * bq + jnp.arange(bq)

    def key_block(j, dq):
        ks = pl.ds(j * bk, bk)
        k = k_ref[ks, :]
        s = _dot(q, k, (1, 1))
        mask = _block_mask(q_pos, j * bk + jnp.arange(bk), q_seg, _load(kv_seg_ref, ks),
                           _load(kv_valid_ref, ks), st.causal)
        p = jnp.exp(st.scale * _masked(s, mask) - lse[:, None])
        ds = p * (_dot(do, v_ref[ks, :], (1, 1)) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k, (1, 0))

    dq = lax.fori_loop(0, _causal_k_end(i, st, nk), key_block,
                       jnp.zeros(dq_ref.shape, jnp.float32))
    dq_ref[...] = (dq * st.scale).astype(dq_ref.dtype)


def _seq_spec(length: int, depth: int | None, blocked: bool) -> pl.BlockSpec:
    """BlockSpec over a BTNH array `[B, T, N, depth]` or, with depth None, a `[B, T]` mask.

    Grids are `(block, batch, head)`: `blocked` hands program t rows `[t*length, (t+1)*length)`,
    otherwise every program sees the whole sequence (`length` = T).
    """
    def index(t, b, n):
        t = t if blocked else 0
        return (b, t) if depth is None else (b, t, n, 0)

    shape = (None, length) if depth is None else (None, length, None, depth)
    return pl.BlockSpec(shape, index)


def _stat_spec(length: int, blocked: bool) -> pl.BlockSpec:
    """BlockSpec over a per-row statistic `[B, N, T]` (log-sum-exp, delta)."""
    return pl.BlockSpec((None, None, length), lambda t, b, n: (b, n, t if blocked else 0))


def _mask_operands(masks: Masks, st: _Static, tq: int, tk: int, by_query: bool) -> tuple:
    """Mask arrays and their BlockSpecs for a grid over query blocks (`by_query`) or key blocks."""
    q_seg, kv_seg, kv_valid = masks
    q_spec = _seq_spec(st.block_q if by_query else tq, None, by_query)
    kv_spec = _seq_spec(tk if by_query else st.block_k, None, not by_query)
    operands, specs = [], []
    if q_seg is not None:
        operands += [q_seg, kv_seg]
        specs += [q_spec, kv_spec]
    if kv_valid is not None:
        operands.append(kv_valid)
        specs.append(kv_spec)
    return operands, specs


def _pallas_call(
    kernel: Callable[..., None],
    grid: tuple[int, ...],
    in_specs: list[pl.BlockSpec],
    out_specs: pl.BlockSpec | list[pl.BlockSpec],
    out_shape: jax.ShapeDtypeStruct | list[jax.ShapeDtypeStruct],
    st: _Static,
    head_dim: int,
    name: str,
) -> Callable[..., Any]:
    """`pl.pallas_call` with the Triton compiler parameters and the interpret setting of `st`."""
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        # Triton parameters also select the Triton lowering for 'cuda' (not Mosaic GPU).
        compiler_params=pl_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8,
                                                 num_stages=2),
        interpret=st.interpret,
        name=name,
    )


def _pallas_forward(q: Array, k: Array, v: Array, masks: Masks, st: _Static) -> tuple[Array, Array]:
    """Pallas forward: out `[B, Tq, N, Hv]` and log-sum-exp `[B, N, Tq]` (float32)."""
    b, tq, n, h = q.shape
    tk, hv = k.shape[1], v.shape[-1]
    mask_operands, mask_specs = _mask_operands(masks, st, tq, tk, by_query=True)
    kernel = functools.partial(_forward_kernel, st=st, nk=tk // st.block_k,
                               has_segments=masks[0] is not None, has_valid=masks[2] is not None)
    return _pallas_call(
        kernel,
        grid=(tq // st.block_q, b, n),
        in_specs=[_seq_spec(st.block_q, h, True), _seq_spec(tk, h, False),
                  _seq_spec(tk, hv, False), *mask_specs],
        out_specs=[_seq_spec(st.block_q, hv, True), _stat_spec(st.block_q, True)],
        out_shape=[jax.ShapeDtypeStruct((b, tq, n, hv), q.dtype),
                   jax.ShapeDtypeStruct((b, n, tq), jnp.float32)],
        st=st, head_dim=max(h, hv), name="flash_attention_forward",
    )(q, k, v, *mask_operands)


def _pallas_backward(
    q: Array, k: Array, v: Array, masks: Masks, out: Array, lse: Array, do: Array, st: _Static
) -> tuple[Array, Array, Array]:
    """Pallas backward: one kernel for (dk, dv) over key blocks, one for dq over query blocks."""
    b, tq, n, h = q.shape
    tk, hv = k.shape[1], v.shape[-1]
    bq, bk = st.block_q, st.block_k
    delta = _delta(out, do)
    flags = dict(has_segments=masks[0] is not None, has_valid=masks[2] is not None)
    operands = (q, k, v, do, lse, delta)

    mask_operands, mask_specs = _mask_operands(masks, st, tq, tk, by_query=False)
    dk, dv = _pallas_call(
        functools.partial(_dkdv_kernel, st=st, nq=tq // bq, **flags),
        grid=(tk // bk, b, n),
        in_specs=[_seq_spec(tq, h, False), _seq_spec(bk, h, True), _seq_spec(bk, hv, True),
                  _seq_spec(tq, hv, False), _stat_spec(tq, False), _stat_spec(tq, False),
                  *mask_specs],
        out_specs=[_seq_spec(bk, h, True), _seq_spec(bk, hv, True)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        st=st, head_dim=max(h, hv), name="flash_attention_dkdv",
    )(*operands, *mask_operands)

    mask_operands, mask_specs = _mask_operands(masks, st, tq, tk, by_query=True)
    dq = _pallas_call(
        functools.partial(_dq_kernel, st=st, nk=tk // bk, **flags),
        grid=(tq // bq, b, n),
        in_specs=[_seq_spec(bq, h, True), _seq_spec(tk, h, False), _seq_spec(tk, hv, False),
                  _seq_spec(bq, hv, True), _stat_spec(bq, True), _stat_spec(bq, True),
                  *mask_specs],
        out_specs=_seq_spec(bq, h, True),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        st=st, head_dim=max(h, hv), name="flash_attention_dq",
    )(*operands, *mask_operands)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# custom_vjp over padded inputs (lengths are multiples of the blocks; padded keys are masked).


def _forward(q: Array, k: Array, v: Array, masks: Masks, st: _Static) -> tuple[Array, Array]:
    """(out, log-sum-exp) from the implementation `st` names."""
    if st.implementation == "pallas":
        return _pallas_forward(q, k, v, masks, st)
    return _xla_forward(q, k, v, masks, st)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q: Array, k: Array, v: Array, masks: Masks, st: _Static) -> Array:
    """Attention on padded inputs; the backward pass saves only the output and log-sum-exp."""
    return _forward(q, k, v, masks, st)[0]


def _attention_fwd(
    q: Array, k: Array, v: Array, masks: Masks, st: _Static
) -> tuple[Array, tuple]:
    out, lse = _forward(q, k, v, masks, st)
    return out, (q, k, v, masks, out, lse)


def _attention_bwd(
    st: _Static, residuals: tuple, do: Array
) -> tuple[Array, Array, Array, None]:
    q, k, v, masks, out, lse = residuals
    backward = _pallas_backward if st.implementation == "pallas" else _xla_backward
    dq, dk, dv = backward(q, k, v, masks, out, lse, do, st)
    return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------------------------------------------
# Public API.


def _segment_pair(
    segment_ids: Array | tuple[Array, Array] | None, b: int, tq: int, tk: int
) -> tuple[Array, Array] | None:
    """Validated `(q_ids [B, Tq], kv_ids [B, Tk])` from one `[B, T]` array or a pair."""
    if segment_ids is None:
        return None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError("segment_ids must be one [batch, length] array or a (q_ids, kv_ids) "
                             f"pair, got a sequence of {len(segment_ids)}")
        q_ids, kv_ids = segment_ids
    else:
        if tq != tk:
            raise ValueError(f"a single segment_ids array needs Tq == Tk (self-attention), got "
                             f"Tq={tq}, Tk={tk}; pass a (q_ids, kv_ids) pair instead")
        q_ids = kv_ids = segment_ids
    for name, ids, t in (("q segment_ids", q_ids, tq), ("kv segment_ids", kv_ids, tk)):
        if jnp.shape(ids) != (b, t):
            raise ValueError(f"{name} must have shape [batch, length] = {(b, t)}, "
                             f"got {jnp.shape(ids)}")
        if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {jnp.result_type(ids)}")
    return jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32)


# Block size (queries and keys) when the caller gives none, per implementation.
DEFAULT_BLOCK = {"pallas": 128, "xla": 512}


def _balanced_block(block: int, length: int) -> int:
    """The XLA path's block for `length` with at most `block` rows: `length` in
    ceil(length / block) equal blocks, rounded up to a multiple of 8 (at most the length), so
    padding stays under 8 rows a block: 513 tokens in blocks of 264, not two of 512."""
    count = -(-length // block)
    return min(length, _common.round_up(-(-length // count), 8), block)


def _check_block(name: str, block: int, pallas: bool) -> None:
    _common.check_int(name, block)
    if pallas and (block < _MIN_PALLAS_BLOCK or block & (block - 1)):
        raise ValueError(f"{name} must be a power of two >= {_MIN_PALLAS_BLOCK} for the Pallas "
                         f"(Triton) kernel, got {block}")


def flash_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    mask: Array | None = None,
    segment_ids: Array | tuple[Array, Array] | None = None,
    causal: bool = False,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    implementation: Implementation = "auto",
    interpret: bool | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> Array:
    """Exact softmax attention in blocks, never materialising the `[Tq, Tk]` scores.

    Args:
      q: `[B, Tq, N, H]` queries; k: `[B, Tk, N, H]` keys; v: `[B, Tk, N, Hv]` values.
      mask: key padding mask `[B, Tk]`, True = real token.
      segment_ids: packed sequences: one int `[B, T]` array (self-attention) or a
        `(q_ids [B, Tq], kv_ids [B, Tk])` pair; a query sees only keys of its own segment.
      causal: query i sees keys j <= i (top-left aligned when Tq != Tk).
      scale: positive logit scale, default `1/sqrt(H)`.
      block_q, block_k: query and key block sizes of both implementations (clamped to the
        sequence; lengths that are not multiples are padded and masked internally). The Pallas
        kernel needs powers of two >= 16; the XLA path takes them as the largest block and
        splits the length into equal blocks (`_balanced_block`), so padding stays small.
        None: `DEFAULT_BLOCK` of the implementation, 128 for the Pallas kernel (GPU), 512 for
        the XLA path (CPU, where larger blocks amortise the per-block loop and transposes:
        experiments/flash/README.md).
      implementation: 'pallas', 'xla', or 'auto' (Pallas on GPU, XLA elsewhere).
      interpret: run the Pallas kernel in interpret mode; None = exactly when the default backend
        is CPU.
      dropout_rate, dropout_rng: attention dropout is not implemented; dropout_rate must be 0.

    Returns:
      `[B, Tq, N, Hv]` in q's dtype; rows whose keys are all masked are zero.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if dropout_rate != 0.0:
        raise ValueError(f"flash attention does not implement attention dropout; got "
                         f"dropout_rate={dropout_rate} (use 0.0, or attention='dense')")
    del dropout_rng  # Accepted for the common signature; unused without dropout.
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be a positive float (None: 1/sqrt(head_dim)), got {scale}")
    dense.check_qkv(q, k, v)
    b, tq, n, h = q.shape
    tk, hv = k.shape[1], v.shape[-1]
    _common.check_key_padding_mask(mask, b, tk)
    segments = _segment_pair(segment_ids, b, tq, tk)
    if implementation == "auto":
        implementation = "pallas" if jax.default_backend() == "gpu" else "xla"
    pallas = implementation == "pallas"
    block_q = DEFAULT_BLOCK[implementation] if block_q is None else block_q
    block_k = DEFAULT_BLOCK[implementation] if block_k is None else block_k
    _check_block("block_q", block_q, pallas)
    _check_block("block_k", block_k, pallas)
    if pallas:
        # Blocks may not shrink below Triton's minimum: short sequences are padded up instead.
        block_q = min(block_q, max(_MIN_PALLAS_BLOCK, pl.next_power_of_2(tq)))
        block_k = min(block_k, max(_MIN_PALLAS_BLOCK, pl.next_power_of_2(tk)))
    else:
        block_q, block_k = _balanced_block(block_q, tq), _balanced_block(block_k, tk)
    st = _Static(
        implementation=implementation,
        scale=h**-0.5 if scale is None else float(scale),
        causal=bool(causal),
        block_q=block_q,
        block_k=block_k,
        interpret=jax.default_backend() == "cpu" if interpret is None else bool(interpret),
    )

    tq_pad, tk_pad = _common.round_up(tq, block_q), _common.round_up(tk, block_k)
    # Padded keys are masked through kv_valid; padded query rows are computed and dropped.
    kv_valid = None
    if mask is not None or tk_pad != tk:
        kv_valid = jnp.ones((b, tk), jnp.int32) if mask is None else jnp.asarray(mask, bool)
        kv_valid = _common.pad_axis(kv_valid.astype(jnp.int32), tk_pad, axis=1)
    q_seg = kv_seg = None
    if segments is not None:
        q_seg, kv_seg = _common.pad_axis(segments[0], tq_pad), _common.pad_axis(segments[1], tk_pad)
    q_p, k_p, v_p = _common.pad_axis(q, tq_pad), _common.pad_axis(k, tk_pad), _common.pad_axis(v, tk_pad)
    if pallas:
        # Triton tiles need power-of-two head dims; zero columns change neither scores nor output.
        h_pad = max(_MIN_PALLAS_BLOCK, pl.next_power_of_2(h))
        q_p, k_p = _common.pad_axis(q_p, h_pad, 3), _common.pad_axis(k_p, h_pad, 3)
        v_p = _common.pad_axis(v_p, max(_MIN_PALLAS_BLOCK, pl.next_power_of_2(hv)), 3)
    out = _attention(q_p, k_p, v_p, (q_seg, kv_seg, kv_valid), st)
    return out[:, :tq, :, :hv]


def pattern(
    q: Array,
    k: Array,
    *,
    mask: Array | None = None,
    segment_ids: Array | tuple[Array, Array] | None = None,
    causal: bool = False,
    **unused_options,
) -> Array:
    """The boolean `[B, N, Tq, Tk]` pattern `flash_attention` implements for these inputs."""
    b, tq = q.shape[:2]
    tk = k.shape[1]
    segments = _segment_pair(segment_ids, b, tq, tk)
    segment_mask = None
    if segments is not None:
        segment_mask = (segments[0][:, :, None] == segments[1][:, None, :])[:, None]
    key_mask = None if mask is None else dense.key_padding_pattern(mask)
    return dense.pattern(q, k, mask=dense.combine_masks(key_mask, segment_mask), causal=causal)
