"""Attention mechanisms by name, so that a config can say `attention='lsh'`.

A registry entry is everything the rest of attnx knows about a mechanism: where its function, dense
pattern and (where it is not a masked dense attention) reference function live; its layout and mask
kind; its capabilities (dropout, bias, key/value cache, shared QK, global tokens, causal, Tq != Tk);
how it decodes incrementally; the options it takes and their presets (the settings of one context: LRA, the benchmark, the
Reformer LM); small example inputs for tests; and the attention cost per query that model FLOP
counts use. Nothing outside this file compares a mechanism's name. Adding a mechanism is one new
file and one entry in `_MECHANISMS`; `tests/test_contract.py` then checks it against its pattern
(or reference) from the entry alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

# Array layouts. 'sequence': q `[B, Tq, N, H]`, k and v `[B, Tk, N, H]` (BTNH); 'image': q, k
# and v are feature maps `[B, H, W, N, Hd]` whose H*W tokens patterns number in raster order;
# 'video': q, k and v are `[B, T, S, N, H]` whose T*S tokens patterns number time-major.
LAYOUTS = ("sequence", "image", "video")
# 'key_padding': the mask argument is `[B, Tk]` (True = real token); 'full': any boolean mask
# broadcastable to `[B, N, Tq, Tk]` (True = may attend); 'none': the mechanism takes no mask
# (mask must be None: it attends within whole feature maps); 'frame': mask must be None and the
# function takes `frame_mask=` `[B, T]` (True = real frame; the video layout).
MASK_KINDS = ("key_padding", "full", "none", "frame")
# Named option presets: the settings each context uses (see `Mechanism.preset`).
PRESETS = ("lra", "bench", "reformer_lm")

# Preset function: (length or None, causal, block) -> options.
Preset = Callable[[int | None, bool, int], dict[str, Any]]
# Attention cost: (options with the function's defaults filled in, length, causal) -> keys/query.
KeysPerQuery = Callable[[Mapping[str, Any], int, bool], float]


def _all_keys(options: Mapping[str, Any], length: int, causal: bool) -> float:
    """Every key (half of them on average when causal)."""
    return length / 2 if causal else length


def _chunk_window(options: Mapping[str, Any]) -> int:
    """Keys of a chunk and its neighbouring chunks."""
    return options["chunk_len"] * (1 + options["chunks_before"] + options["chunks_after"])


def _video_keys(options: Mapping[str, Any], length: int, causal: bool) -> float:
    """Video mechanisms, `length` = the clip's T*S tokens: every key, an upper bound (the exact
    count of temporal, spatial and key-frame attention needs T and S apart)."""
    return _all_keys(options, length, causal)


def _needs_length(length: int | None, preset: str) -> int:
    if length is None:
        raise ValueError(f"preset {preset!r} depends on the sequence length: pass length=")
    return length


@dataclasses.dataclass(frozen=True)
class Example:
    """Small random inputs of one mechanism (`Mechanism.example`).

    Attributes:
      q: `[B, Tq, N, H]` queries (the shared qk for shared-QK mechanisms); `[B, H, W, N, Hd]`
        in the 'image' layout, `[B, T, S, N, H]` in the 'video' layout.
      k: `[B, Tk, N, H]` keys (q itself for shared-QK mechanisms); as q in the 'image' layout.
      v: `[B, Tk, N, H]` values; as q in the 'image' layout.
      key_mask: `[B, Tk]` bool, True = real token; the last keys of row 1 are padding (all True
        for mask kind 'none', Tk = H*W; for mask kind 'frame' the frame mask `[B, T]`, the last
        frame of row 1 padding).
      options: mechanism options that fit these shapes.
      inputs: further keyword inputs the function needs (`rng`, `global_mask`, `global_qkv`,
        `bias_table`).
    """

    q: Array
    k: Array
    v: Array
    key_mask: Array
    options: dict[str, Any]
    inputs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One attention mechanism: how to call it, what it can do, and its settings.

    Attributes:
      name: registry name.
      module: import path of the file that implements it.
      function: name of `fn(q, k, v, *, mask, causal, dropout_rate, dropout_rng, **options)`
        (or `fn(qk, v, ...)` when `shared_qk`), returning `[B, Tq, N, H]`.
      pattern_function: name of `pattern(q, k, *, mask, causal, **options)` returning the boolean
        `[B, N, Tq, Tk]` pattern the mechanism implements (for tests and attention-map images).
      reference_function: for mechanisms that are not a masked dense attention, the name of a
        plainly written function with `function`'s signature that the contract test compares
        against instead of `dense.attention(q, k, v, mask=pattern)`; None otherwise.
      bias_function: for mechanisms that add their own logit bias (MaxViT's relative position
        bias), the name of `bias(q, k, **options, **inputs)` returning that bias `[N, Tq, Tk]`
        over the (raster) tokens (None when given no table); the oracle is then
        `dense.attention(q, k, v, mask=pattern, bias=bias)`. None for the other mechanisms.
      layout: one of LAYOUTS.
      mask_kind: one of MASK_KINDS.
      options: names of the keyword options a config may set (`model.attention_options`).
      presets: preset name (in PRESETS) -> `(length, causal, block) -> options`; a preset the entry
        does not list means the function's own defaults.
      example_options: options for the small shapes of `example` (length 20).
      keys_per_query: the attention cost per query, in keys, for model FLOP counts.
      shared_qk: queries and keys share one projection; the function takes `(qk, v)`.
      needs_rng: the function takes `rng=` (e.g. random rotations for hashing).
      global_projections: the function takes `global_mask=` `[B, T]` and
        `global_qkv=(qg, kg, vg)`, the separate projections of global tokens' rows (Longformer).
      relative_bias_option: for mechanisms that take a learned relative position bias table
        `bias_table=` `[N, 2P-1, 2P-1]` over P x P partitions, the option that holds P
        ('window', 'grid'); None for the others.
      supports_dropout: attention dropout (`dropout_rate > 0`) is implemented.
      supports_bias: the function takes an additive logit `bias=` `[B, N, Tq, Tk]`.
      supports_cache: incremental decoding over a key/value cache (a full mask, Tq != Tk).
      supports_causal: `causal=True` is implemented.
      supports_cross_length: queries and keys may differ in length (Tq != Tk).
      zero_masked_rows: a query with no key to attend returns zeros (LSH: a token with no other
        key attends to itself, and outputs at padded queries are unspecified).
      decoding: how the mechanism's module decodes causally one token at a time with a cache
        of its own, through `prefill(*operands, max_len, **options) -> (out, cache)` (the
        prompt, attended exactly as `function` with causal=True) and
        `decode_step(*operands, cache, **options) -> (out, cache)` (one token `[B, 1, N, H]`):
        'exact' (each step equals the last row of the causal attention over every position so
        far: local attention's last chunks), 'rule' (a decoding rule that differs from
        recomputation, documented by `decode_step`: LSH's HF bucket rule), or None (no such
        functions; dense decodes through `supports_cache`).
    """

    name: str
    module: str
    function: str
    pattern_function: str
    reference_function: str | None = None
    bias_function: str | None = None
    layout: str = "sequence"
    mask_kind: str = "key_padding"
    options: tuple[str, ...] = ()
    presets: Mapping[str, Preset] = dataclasses.field(default_factory=dict)
    example_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    keys_per_query: KeysPerQuery = _all_keys
    shared_qk: bool = False
    needs_rng: bool = False
    global_projections: bool = False
    relative_bias_option: str | None = None
    supports_dropout: bool = True
    supports_bias: bool = False
    supports_cache: bool = False
    supports_causal: bool = True
    supports_cross_length: bool = False
    zero_masked_rows: bool = True
    decoding: str | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"mechanism {self.name!r}: layout must be one of {LAYOUTS}, "
                             f"got {self.layout!r}")
        if self.mask_kind not in MASK_KINDS:
            raise ValueError(f"mechanism {self.name!r}: mask_kind must be one of {MASK_KINDS}, "
                             f"got {self.mask_kind!r}")
        unknown = sorted(set(self.presets) - set(PRESETS))
        if unknown:
            raise ValueError(f"mechanism {self.name!r}: unknown presets {unknown}; "
                             f"known presets: {', '.join(PRESETS)}")
        if self.decoding not in (None, "exact", "rule"):
            raise ValueError(f"mechanism {self.name!r}: decoding must be None, 'exact' or 'rule', "
                             f"got {self.decoding!r}")
        if self.supports_cache and not (self.mask_kind == "full" and self.supports_cross_length):
            raise ValueError(f"mechanism {self.name!r}: a key/value cache needs mask_kind 'full' "
                             "and supports_cross_length")

    @property
    def key_padding_mask(self) -> bool:
        """The mask argument is a key padding mask `[B, Tk]`, not a full pattern."""
        return self.mask_kind == "key_padding"

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)

    @property
    def pattern_fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.pattern_function)

    @property
    def prefill_fn(self) -> Callable[..., Any]:
        """The module's `prefill` (mechanisms with `decoding`)."""
        return getattr(importlib.import_module(self.module), "prefill")

    @property
    def decode_step_fn(self) -> Callable[..., Any]:
        """The module's `decode_step` (mechanisms with `decoding`)."""
        return getattr(importlib.import_module(self.module), "decode_step")

    @property
    def reference_fn(self) -> Callable[..., Any] | None:
        if self.reference_function is None:
            return None
        return getattr(importlib.import_module(self.module), self.reference_function)

    @property
    def bias_fn(self) -> Callable[..., Any] | None:
        if self.bias_function is None:
            return None
        return getattr(importlib.import_module(self.module), self.bias_function)

    def option_defaults(self) -> dict[str, Any]:
        """The defaults `fn` gives its options; required options (no default) are absent."""
        parameters = inspect.signature(self.fn).parameters
        return {name: parameters[name].default for name in self.options
                if parameters[name].default is not inspect.Parameter.empty}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """ValueError naming the unknown or missing options, and listing the valid ones."""
        unknown = sorted(set(options) - set(self.options))
        valid = ", ".join(self.options) or "none"
        if unknown:
            raise ValueError(f"attention options {unknown} are not options of mechanism "
                             f"{self.name!r}; its options: {valid}")
        missing = [name for name in self.options
                   if name not in options and name not in self.option_defaults()]
        if missing:
            raise ValueError(f"mechanism {self.name!r} needs the attention options {missing} "
                             f"(its options: {valid})")

    def preset(self, preset: str, *, length: int | None = None, causal: bool = False,
               block: int = 64) -> dict[str, Any]:
        """The options of preset `preset` (one of PRESETS) for attention over `length` tokens.

        `block` is the chunk/block length presets scale from (64 unless a benchmark says
        otherwise). A preset this entry does not list is `{}`: the function's defaults.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
        make = self.presets.get(preset)
        return {} if make is None else make(length, causal, block)

    def attention_keys(self, options: Mapping[str, Any], length: int, causal: bool) -> float:
        """Keys one query attends to with these options (the function's defaults filled in)."""
        return self.keys_per_query({**self.option_defaults(), **options}, length, causal)

    def mask_argument(self, key_mask: Array) -> Array | None:
        """A key padding mask `[B, Tk]` in this mechanism's mask kind (None for kinds 'none' and
        'frame', whose mechanisms take no mask; see `mask_inputs`)."""
        if self.key_padding_mask:
            return key_mask
        if self.mask_kind in ("none", "frame"):
            return None
        return key_mask.astype(bool)[:, None, None, :]

    def mask_inputs(self, key_mask: Array) -> dict[str, Array | None]:
        """The mask keyword arguments of `fn` for a key padding mask (for mask kind 'frame',
        `key_mask` is the frame mask `[B, T]`: `{'frame_mask': key_mask}`)."""
        if self.mask_kind == "frame":
            return {"frame_mask": key_mask}
        return {"mask": self.mask_argument(key_mask)}

    def operands(self, q: Array, k: Array, v: Array) -> tuple[Array, ...]:
        """The positional arguments of `fn`: `(q, v)` for shared-QK mechanisms, else `(q, k, v)`."""
        return (q, v) if self.shared_qk else (q, k, v)

    def example(self, rng: Array, *, batch: int = 2, length: int = 20,
                kv_length: int | None = None, heads: int = 2, head_dim: int = 8,
                image_size: tuple[int, int] = (4, 6), clip_size: tuple[int, int] = (4, 6),
                dtype: Any = jnp.float32) -> Example:
        """Random inputs `[batch, length, heads, head_dim]` (keys of `kv_length`, default
        `length`) with `example_options`; the last 5 keys of row 1 are padding. Global tokens
        (`global_projections`): tokens 0 and 7 of row 0 and 3 of row 1, with random global_qkv.
        In the 'image' layout q, k, v are `[batch, *image_size, heads, head_dim]` feature maps
        (`length` and `kv_length` unused) with a random `bias_table` where the entry takes one;
        in the 'video' layout `[batch, *clip_size, heads, head_dim]` (T frames of S tokens) with
        the last frame of row 1 padding."""
        kv_length = length if kv_length is None else kv_length
        keys = jax.random.split(rng, 8)
        if self.layout == "image":
            return self._image_example(keys, batch, image_size, heads, head_dim, dtype)
        if self.layout == "video":
            shape = (batch, *clip_size, heads, head_dim)
            q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
            frame_mask = jnp.ones((batch, clip_size[0]), bool).at[1, -1].set(False)
            return Example(q, k, v, frame_mask, dict(self.example_options), {})
        q_shape, kv_shape = (batch, length, heads, head_dim), (batch, kv_length, heads, head_dim)
        q = jax.random.normal(keys[0], q_shape, dtype)
        k = q if self.shared_qk else jax.random.normal(keys[1], kv_shape, dtype)
        v = jax.random.normal(keys[2], kv_shape, dtype)
        key_mask = jnp.ones((batch, kv_length), bool).at[1, kv_length - 5:].set(False)
        inputs: dict[str, Any] = {}
        if self.needs_rng:
            inputs["rng"] = keys[3]
        if self.global_projections:
            inputs["global_mask"] = jnp.zeros((batch, length), bool).at[0, [0, 7]].set(True).at[
                1, 3].set(True)
            inputs["global_qkv"] = tuple(jax.random.normal(key, q_shape, dtype)
                                         for key in keys[4:7])
        return Example(q, k, v, key_mask, dict(self.example_options), inputs)

    def _image_example(self, keys: Array, batch: int, image_size: tuple[int, int], heads: int,
                       head_dim: int, dtype: Any) -> Example:
        """`example` in the 'image' layout: no padding (the key mask is all True)."""
        shape = (batch, *image_size, heads, head_dim)
        q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
        inputs: dict[str, Any] = {}
        if self.relative_bias_option is not None:
            size = self.example_options[self.relative_bias_option]
            inputs["bias_table"] = jax.random.normal(keys[3], (heads, 2 * size - 1, 2 * size - 1),
                                                     dtype)
        key_mask = jnp.ones((batch, image_size[0] * image_size[1]), bool)
        return Example(q, k, v, key_mask, dict(self.example_options), inputs)


def _lsh_bench(length: int | None, causal: bool, block: int) -> dict[str, Any]:
    """LSH chunks of `block`, 2 rounds, about length / block buckets (even, >= 2)."""
    length = _needs_length(length, "bench")
    return {"chunk_len": block, "n_hashes": 2, "n_buckets": max(2, 2 * (length // block // 2))}


def _lsh_lra(length: int | None, causal: bool, block: int) -> dict[str, Any]:
    """2 rounds, chunks of `block` seeing the chunk before, 2 * ceil(length / block) buckets
    (HF Reformer's recommendation: buckets about half a chunk long)."""
    length = _needs_length(length, "lra")
    return dict(n_hashes=2, n_buckets=2 * -(-length // block), chunk_len=block, chunks_before=1,
                chunks_after=0)


_MECHANISMS: dict[str, Mechanism] = {
    m.name: m
    for m in [
        Mechanism(
            "dense", "attnx.attention.dense", "attention", "pattern", mask_kind="full",
            options=("scale",), supports_bias=True, supports_cache=True,
            supports_cross_length=True),
        Mechanism(
            "flash", "attnx.attention.flash", "flash_attention", "pattern",
            options=("scale", "block_q", "block_k", "implementation", "interpret"),
            presets={"bench": lambda length, causal, block: {"implementation": "xla"}},
            example_options=dict(block_q=8, block_k=8, implementation="xla"),
            supports_dropout=False, supports_cross_length=True),
        Mechanism(
            "lsh", "attnx.attention.lsh", "lsh_attention", "pattern", reference_function="reference",
            options=("n_hashes", "n_buckets", "chunk_len", "chunks_before", "chunks_after",
                     "attend_across_buckets", "allow_duplicate_attention", "parts"),
            presets={
                "lra": _lsh_lra,
                "bench": _lsh_bench,
                "reformer_lm": lambda length, causal, block: dict(
                    n_hashes=2, n_buckets=64, chunk_len=block, chunks_before=1, chunks_after=0),
            },
            example_options=dict(n_hashes=2, n_buckets=4, chunk_len=4, chunks_before=1,
                                 chunks_after=0),
            keys_per_query=lambda o, length, causal: _chunk_window(o) * o["n_hashes"],
            shared_qk=True, needs_rng=True, zero_masked_rows=False, decoding="rule"),
        Mechanism(
            "local", "attnx.attention.local", "local_attention", "pattern",
            options=("chunk_len", "chunks_before", "chunks_after", "parts"),
            presets={
                # Each chunk sees the chunk before it and, unless causal, the one after.
                "lra": lambda length, causal, block: dict(
                    chunk_len=block, chunks_before=1, chunks_after=0 if causal else 1),
                "bench": lambda length, causal, block: {"chunk_len": block},
                "reformer_lm": lambda length, causal, block: dict(
                    chunk_len=block, chunks_before=1, chunks_after=0),
            },
            example_options=dict(chunk_len=8, chunks_before=1, chunks_after=1),
            keys_per_query=lambda o, length, causal: _chunk_window(o), decoding="exact"),
        Mechanism(
            "longformer", "attnx.attention.longformer", "sliding_window_attention", "pattern",
            reference_function="reference",
            options=("window", "dilation", "max_global", "block_size"),
            presets={
                # A one-sided window of `block` (2 * block + 1 keys), one global token per row
                # (a classifier's [CLS]).
                "lra": lambda length, causal, block: dict(window=block, max_global=1),
                # A one-sided window of twice the block.
                "bench": lambda length, causal, block: {"window": 2 * block},
            },
            example_options=dict(window=2, dilation=2, max_global=2, block_size=4),
            # Dilation spreads the window's keys, it does not add any.
            keys_per_query=lambda o, length, causal: 2 * o["window"] + 1,
            global_projections=True),
        Mechanism(
            "block", "attnx.attention.multi_axis", "block_attention", "block_pattern",
            bias_function="block_bias", layout="image", mask_kind="none",
            options=("window", "scale"), example_options=dict(window=2),
            keys_per_query=lambda o, length, causal: o["window"] ** 2,
            relative_bias_option="window", supports_causal=False),
        Mechanism(
            "grid", "attnx.attention.multi_axis", "grid_attention", "grid_pattern",
            bias_function="grid_bias", layout="image", mask_kind="none",
            options=("grid", "scale"), example_options=dict(grid=2),
            keys_per_query=lambda o, length, causal: o["grid"] ** 2,
            relative_bias_option="grid", supports_causal=False),
        Mechanism(
            "temporal", "attnx.attention.video", "temporal_attention", "temporal_pattern",
            layout="video", mask_kind="frame", options=("scale",), keys_per_query=_video_keys),
        Mechanism(
            "spatial", "attnx.attention.video", "spatial_attention", "spatial_pattern",
            layout="video", mask_kind="frame", options=("scale",), keys_per_query=_video_keys,
            supports_causal=False),
        Mechanism(
            "joint", "attnx.attention.video", "joint_attention", "joint_pattern",
            layout="video", mask_kind="frame", options=("scale",), keys_per_query=_video_keys),
        Mechanism(
            "factorized_heads", "attnx.attention.video", "factorized_heads_attention",
            "factorized_heads_pattern", layout="video", mask_kind="frame",
            options=("temporal_heads", "scale"), keys_per_query=_video_keys),
        Mechanism(
            "keyframe", "attnx.attention.video", "keyframe_attention", "keyframe_pattern",
            layout="video", mask_kind="frame", options=("key_frames", "include_self", "scale"),
            example_options=dict(key_frames="stride:2"), keys_per_query=_video_keys),
    ]
}


def names(layout: str | None = None) -> list[str]:
    """Registered mechanism names, sorted; only those of `layout` (one of LAYOUTS) if given."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return sorted(name for name, m in _MECHANISMS.items() if layout in (None, m.layout))


def get(name: str) -> Mechanism:
    """The mechanism registered as `name`; ValueError listing the known names otherwise."""
    try:
        return _MECHANISMS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention mechanism {name!r}; known mechanisms: {', '.join(names())}"
        ) from None
