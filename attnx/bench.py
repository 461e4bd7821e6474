"""`python -m attnx.bench`: speed and memory of every attention mechanism, LRA Table 2 style.

For each mechanism and sequence length, the forward pass and the forward + backward pass (a VJP
with a random cotangent, as in a training step) are jitted; compile time is reported apart from
the median time of repeated runs after a warm-up; temporary memory comes from the compiled
executable's memory analysis, which is read *before* running it, so that a length that would not
fit in free memory is reported as "OOM-skip" instead of waking the kernel's OOM killer. Speed and
memory are given relative to dense attention at the same length, measured in the same run.

    python -m attnx.bench [--mechanisms=dense,lsh,...] [--lengths=1024,2048,4096,8192]
        [--batch=1 --heads=4 --head_dim=64 --dtype=float32 --repeats=5 --block=64]
        [--peers] [--out=DIR]
    python -m attnx.bench --config=configs/transformer_lm.py[:arg] [--steps=10] [--out=DIR]
    python -m attnx.bench --config=configs/reformer_lm.py --peers   # and HF's ReformerModelWithLMHead

The second form is the model-level mode (`attnx.bench_model`): training steps/s, tokens/s and the
fraction of the machine's matmul peak (measured in the same run) that a config reaches.

On a busy machine, `taskset -c 0 python -m attnx.bench --peers` gives XLA and torch one core each
(no thread synchronisation under contention), the fairest peer comparison there.

`--peers` runs HF transformers' `LSHSelfAttention`, `LocalSelfAttention`, `LongformerSelfAttention`
and PyTorch's `scaled_dot_product_attention` at the same settings (install the `peers` extra) and
adds "ours / peer" time ratios. With `--out=DIR` the table, one JSON record per mechanism and
length, and a plot go to DIR/bench.md, DIR/bench.json and DIR/bench.png.

The work is split into pure pieces: `measure` (one mechanism at one length -> `Record`),
`measure_peer`, `add_relative` (ratios within one run), `to_markdown`, `plot` and `write_outputs`;
`run_mechanisms` is the mechanism mode and `main` only parses flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import psutil
from absl import app, flags
from ml_collections import config_flags

from attnx import bench_model
from attnx.attention import registry

DTYPES = ("float32", "bfloat16", "float16")
MODES = ("fwd", "fwd_bwd")
MODE_TITLES = {"fwd": "forward", "fwd_bwd": "forward + backward"}

# Fraction of the free memory a compiled executable may plan to use before it is skipped; the rest
# is headroom for the allocator, the inputs and other processes on a shared machine.
MEMORY_FRACTION = 0.8

# Benchmark options per mechanism, as a function of the sequence length and a block size (64 by
# default: LSH and local chunks of 64, a one-sided Longformer window of 128). Mechanisms not listed
# run with their own defaults.
DEFAULT_OPTIONS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "flash": lambda length, block: {"implementation": "xla"},
    "lsh": lambda length, block: {
        "chunk_len": block,
        "n_hashes": 2,
        "n_buckets": max(2, 2 * (length // block // 2)),
    },
    "local": lambda length, block: {"chunk_len": block},
    "longformer": lambda length, block: {"window": 2 * block},
}

# Which peer each of our mechanisms is compared with under `--peers`.
PEER_OF = {
    "dense": "sdpa",
    "flash": "sdpa",
    "lsh": "hf_lsh",
    "local": "hf_local",
    "longformer": "hf_longformer",
}
PEER_TITLES = {
    "sdpa": "torch scaled_dot_product_attention",
    "hf_lsh": "HF LSHSelfAttention",
    "hf_local": "HF LocalSelfAttention",
    "hf_longformer": "HF LongformerSelfAttention",
}


@dataclasses.dataclass
class Timing:
    """One compiled function (forward, or forward + backward) of one mechanism at one length.

    Attributes:
      status: "ok", "oom-skip" (the executable would not fit in free memory; not run) or "error".
      message: why it is not "ok".
      compile_s: seconds to trace, lower and compile (None for peers, which are not compiled).
      time_s: median seconds per call after a warm-up call.
      min_s: fastest call (with `time_s`, a hint of the noise on a shared machine).
      temp_bytes: temporary buffer bytes from the compiled memory analysis.
      needed_bytes: temporary + output bytes the executable allocates when it runs.
      speedup_vs_dense: dense `time_s` / this `time_s` at the same length in the same run.
      memory_vs_dense: this `temp_bytes` / dense `temp_bytes` at the same length in the same run.
      vs_peer: this `time_s` / the peer's `time_s` (below 1: ours is faster).
    """

    status: str
    message: str = ""
    compile_s: float | None = None
    time_s: float | None = None
    min_s: float | None = None
    temp_bytes: int | None = None
    needed_bytes: int | None = None
    speedup_vs_dense: float | None = None
    memory_vs_dense: float | None = None
    vs_peer: float | None = None

    @property
    def steps_per_s(self) -> float | None:
        return None if self.time_s is None else 1.0 / self.time_s


@dataclasses.dataclass
class Record:
    """All measurements of one mechanism (ours or a peer) at one sequence length.

    Attributes:
      mechanism: registry name (source "attnx") or peer name (source "peer").
      source: "attnx" or "peer".
      status: "measured" or "unavailable" (its module failed to import; `message` says why).
      peer: for our mechanisms, the peer compared with under `--peers` (None if none ran).
      timings: "fwd" and "fwd_bwd" -> `Timing` (empty when unavailable).
    """

    mechanism: str
    source: str
    length: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    options: dict[str, Any]
    status: str = "measured"
    message: str = ""
    peer: str | None = None
    timings: dict[str, Timing] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for mode, timing in self.timings.items():
            out["timings"][mode]["steps_per_s"] = timing.steps_per_s
        return out


def available_memory_bytes(device: jax.Device) -> int:
    """Bytes free for a new allocation on `device`: host free memory on CPU, else device memory."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return int(psutil.virtual_memory().available)


def bench_options(name: str, length: int, block: int = 64) -> dict[str, Any]:
    """The options `name` is benchmarked with at `length` (see `DEFAULT_OPTIONS`)."""
    make = DEFAULT_OPTIONS.get(name)
    return {} if make is None else make(length, block)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _run_times(call: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `call` (which must block until done) after a warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _time_compiled(compiled: Any, args: Sequence[Any], repeats: int) -> list[float]:
    return _run_times(lambda: jax.block_until_ready(compiled(*args)), repeats)


def _mechanism_call(mechanism: registry.Mechanism, fn: Callable[..., Any],
                    options: dict[str, Any]) -> Callable[..., jax.Array]:
    """`call(rng, *inputs) -> out` calling `fn` as the registry says (inputs (q, k, v) or (qk, v))."""

    def call(rng: jax.Array, *inputs: jax.Array) -> jax.Array:
        extra = {"rng": rng} if mechanism.needs_rng else {}
        return fn(*inputs, **options, **extra)

    return call


def _compile_and_time(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> Timing:
    """Compile `fn` for `args`; time it if its planned memory fits in the free memory, else skip."""
    try:
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
    except Exception as error:  # a mechanism that cannot trace at this length is a table entry
        return Timing("error", _first_line(error))
    stats = compiled.memory_analysis()
    temp = needed = None
    if stats is not None:
        temp = int(stats.temp_size_in_bytes)
        needed = temp + int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes)
        free_bytes = available_memory_bytes(jax.devices()[0])
        if needed > MEMORY_FRACTION * free_bytes:
            return Timing("oom-skip", f"needs {_fmt_bytes(needed)}, {_fmt_bytes(free_bytes)} free",
                          compile_s=compile_s, temp_bytes=temp, needed_bytes=needed)
    try:
        times = _time_compiled(compiled, args, repeats)
    except Exception as error:  # e.g. a device out-of-memory error on an accelerator
        return Timing("error", _first_line(error), compile_s=compile_s, temp_bytes=temp,
                      needed_bytes=needed)
    return Timing("ok", compile_s=compile_s, time_s=statistics.median(times), min_s=min(times),
                  temp_bytes=temp, needed_bytes=needed)


def measure(
    mechanism: registry.Mechanism,
    length: int,
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    dtype: str = "float32",
    repeats: int = 5,
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> Record:
    """Forward and forward + backward of one mechanism on `[batch, length, heads, head_dim]` inputs.

    The inputs have no mask and no causal constraint; `options` (default `bench_options`) go to the
    mechanism function. A mechanism whose module fails to import gives an "unavailable" record.
    """
    options = bench_options(mechanism.name, length) if options is None else dict(options)
    record = Record(mechanism.name, "attnx", length, batch, heads, head_dim, dtype, options)
    try:
        fn = mechanism.fn
    except Exception as error:  # a missing or half-written module: report it, keep benchmarking
        record.status, record.message = "unavailable", _first_line(error)
        return record
    call = _mechanism_call(mechanism, fn, options)
    keys = jax.random.split(jax.random.key(seed), 5)
    shape = (batch, length, heads, head_dim)
    n_inputs = 2 if mechanism.shared_qk else 3
    inputs = [jax.random.normal(key, shape, dtype) for key in keys[:n_inputs]]
    cotangent = jax.random.normal(keys[3], shape, dtype)
    rng = keys[4]

    def fwd_bwd(rng: jax.Array, cotangent: jax.Array, *inputs: jax.Array) -> Any:
        out, vjp = jax.vjp(lambda *xs: call(rng, *xs), *inputs)
        return out, vjp(cotangent)

    record.timings["fwd"] = _compile_and_time(call, (rng, *inputs), repeats)
    record.timings["fwd_bwd"] = _compile_and_time(fwd_bwd, (rng, cotangent, *inputs), repeats)
    return record


def _torch_peer(name: str, length: int, batch: int, heads: int, head_dim: int, dtype: str,
                options: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward + backward) closures running peer `name` in PyTorch on random inputs.

    HF modules own their input projections; they are replaced by copies of the input so that the
    peer times the attention itself, like ours (the HF layers take one hidden-state tensor, so q, k
    and v are copies of one `[B, T, N*H]` input).
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    model_dim = heads * head_dim

    def randn(*shape: int, grad: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, generator=generator).to(torch_dtype)
        return x.requires_grad_(grad)

    class Copy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

    if name == "sdpa":
        qkv = [randn(batch, heads, length, head_dim, grad=True) for _ in range(3)]
        cotangent = randn(batch, heads, length, head_dim)

        def run() -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(*qkv)

        leaves = qkv
    else:
        from transformers import LongformerConfig, ReformerConfig
        from transformers.models.longformer import modeling_longformer
        from transformers.models.reformer import modeling_reformer

        hidden = randn(batch, length, model_dim, grad=True)
        cotangent = randn(batch, length, model_dim)
        leaves = [hidden]
        if name == "hf_longformer":
            config = LongformerConfig(hidden_size=model_dim, num_attention_heads=heads,
                                      attention_window=[2 * options["window"]],
                                      attention_probs_dropout_prob=0.0)
            module = modeling_longformer.LongformerSelfAttention(config, layer_id=0)
            for projection in ("query", "key", "value"):
                setattr(module, projection, Copy())
            no_mask = torch.zeros(batch, length)
            not_masked = torch.zeros(batch, length, dtype=torch.bool)

            def run() -> torch.Tensor:
                return module(hidden, attention_mask=no_mask, is_index_masked=not_masked,
                              is_index_global_attn=not_masked, is_global_attn=False)[0]
        else:
            common = dict(hidden_size=model_dim, num_attention_heads=heads,
                          attention_head_size=head_dim, is_decoder=False,
                          max_position_embeddings=length)
            if name == "hf_lsh":
                config = ReformerConfig(**common, attn_layers=["lsh"],
                                        lsh_attn_chunk_length=options["chunk_len"],
                                        num_hashes=options["n_hashes"],
                                        num_buckets=options["n_buckets"],
                                        lsh_num_chunks_before=1, lsh_num_chunks_after=0,
                                        lsh_attention_probs_dropout_prob=0.0)
                module = modeling_reformer.LSHSelfAttention(config, layer_idx=0)
                projections = ("query_key", "value")
            else:
                config = ReformerConfig(**common, attn_layers=["local"],
                                        local_attn_chunk_length=options["chunk_len"],
                                        local_num_chunks_before=1, local_num_chunks_after=0,
                                        local_attention_probs_dropout_prob=0.0)
                module = modeling_reformer.LocalSelfAttention(config, layer_idx=0)
                projections = ("query", "key", "value")
            for projection in projections:
                setattr(module, projection, Copy())

            def run() -> torch.Tensor:
                return module(hidden).hidden_states
        module.eval()

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        for leaf in leaves:
            leaf.grad = None
        run().backward(cotangent)

    return forward, forward_backward


def peers_unavailable_reason() -> str | None:
    """None if torch and transformers import; otherwise what is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        return f"{_first_line(error)} (install attnx[peers] for the peer comparison)"
    return None


def measure_peer(name: str, length: int, *, batch: int = 1, heads: int = 4, head_dim: int = 64,
                 dtype: str = "float32", repeats: int = 5,
                 options: dict[str, Any] | None = None) -> Record:
    """Forward and forward + backward time of peer `name` (a key of `PEER_TITLES`) in PyTorch.

    `options` are those of the attnx mechanism it is paired with (chunk_len, n_hashes, n_buckets
    for LSH; chunk_len for local; window for Longformer). Torch uses as many threads as this
    process has cores, like XLA's CPU backend.
    """
    if name not in PEER_TITLES:
        raise ValueError(f"peer must be one of {', '.join(PEER_TITLES)}, got {name!r}")
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    options = dict(options or {})
    record = Record(name, "peer", length, batch, heads, head_dim, dtype, options)
    try:
        forward, forward_backward = _torch_peer(name, length, batch, heads, head_dim, dtype,
                                                options)
        for mode, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
            times = _run_times(call, repeats)
            record.timings[mode] = Timing("ok", time_s=statistics.median(times), min_s=min(times))
    except Exception as error:  # a peer that rejects these settings is a table entry
        record.timings = {mode: Timing("error", _first_line(error)) for mode in MODES}
    return record


def add_relative(records: list[Record]) -> list[Record]:
    """Fill speed-up and memory relative to dense, and time relative to the paired peer.

    Ratios use records of the same run at the same length; they stay None where the reference was
    not measured. Returns `records` (updated in place).
    """
    ours = {(r.mechanism, r.length): r for r in records if r.source == "attnx"}
    peers = {(r.mechanism, r.length): r for r in records if r.source == "peer"}
    for record in ours.values():
        dense = ours.get(("dense", record.length))
        peer = peers.get((PEER_OF.get(record.mechanism), record.length))
        record.peer = peer.mechanism if peer else None
        for mode, timing in record.timings.items():
            if timing.status != "ok":
                continue
            base = dense.timings.get(mode) if dense else None
            if base is not None and base.status == "ok":
                timing.speedup_vs_dense = base.time_s / timing.time_s
                if base.temp_bytes and timing.temp_bytes is not None:
                    timing.memory_vs_dense = timing.temp_bytes / base.temp_bytes
            other = peer.timings.get(mode) if peer else None
            if other is not None and other.status == "ok":
                timing.vs_peer = timing.time_s / other.time_s
    return records


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _fmt_bytes(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{_fmt(n / 1024**power)} {units[power]}"


def _status_cell(record: Record, mode: str) -> str | None:
    """The cell of a measurement that did not run ("unavailable", "OOM-skip", "error"), else None."""
    if record.status == "unavailable":
        return "unavailable"
    timing = record.timings[mode]
    if timing.status == "oom-skip":
        return f"OOM-skip (needs {_fmt_bytes(timing.needed_bytes)})"
    return None if timing.status == "ok" else timing.status


def _speed_cell(record: Record, mode: str) -> str:
    bad = _status_cell(record, mode)
    if bad:
        return bad
    timing = record.timings[mode]
    ratio = "" if timing.speedup_vs_dense is None else f" ({timing.speedup_vs_dense:.2f}x)"
    return f"{_fmt(timing.steps_per_s)}{ratio}"


def _memory_cell(record: Record, mode: str) -> str:
    if record.status == "unavailable":
        return "unavailable"
    timing = record.timings[mode]
    if timing.temp_bytes is None:
        return timing.status if timing.status != "ok" else "n/a"
    ratio = "" if timing.memory_vs_dense is None else f" ({timing.memory_vs_dense:.2f}x)"
    skipped = ", not run" if timing.status == "oom-skip" else ""
    return f"{_fmt(timing.temp_bytes / 2**20)}{ratio}{skipped}"


def _compile_cell(record: Record) -> str:
    if record.status == "unavailable":
        return "unavailable"
    return " / ".join(t.status if t.compile_s is None else f"{t.compile_s:.2f}"
                      for t in (record.timings[mode] for mode in MODES))


def _peer_cell(record: Record, peer: Record | None, mode: str) -> str:
    bad = _status_cell(record, mode)
    if bad:
        return bad
    timing = record.timings[mode]
    if peer is None or peer.timings[mode].status != "ok":
        return "peer error" if peer else "—"
    other = peer.timings[mode]
    return (f"{timing.vs_peer:.2f}x ({_fmt(timing.time_s * 1e3)} / {_fmt(other.time_s * 1e3)} "
            "ms)")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _options_text(per_length: Sequence[dict[str, Any]]) -> str:
    """Options of one mechanism over the lengths (ascending): `k=v`, or `k=first..last`."""
    parts = []
    for key in per_length[0]:
        values = [options.get(key) for options in per_length]
        same = all(value == values[0] for value in values)
        parts.append(f"{key}={values[0]}" if same else f"{key}={values[0]}..{values[-1]}")
    return ", ".join(parts) or "—"


def to_markdown(records: list[Record], *, repeats: int, environment: dict[str, Any],
                peers_note: str | None = None) -> str:
    """The LRA Table 2 style report of `records` (after `add_relative`) as Markdown."""
    ours = [r for r in records if r.source == "attnx"]
    if not ours:
        return "No mechanism was benchmarked.\n"
    lengths = sorted({r.length for r in ours})
    names = list(dict.fromkeys(r.mechanism for r in ours))
    by_key = {(r.mechanism, r.length, r.source): r for r in records}
    first = ours[0]
    header = ["mechanism"] + [str(length) for length in lengths]

    def rows(cell: Callable[[Record], str]) -> list[list[str]]:
        return [[name] + [cell(by_key[name, length, "attnx"]) for length in lengths]
                for name in names]

    lines = [
        "## Attention mechanism benchmark",
        "",
        f"batch {first.batch}, {first.heads} heads of {first.head_dim}, {first.dtype}, no mask; "
        f"median of {repeats} runs after a warm-up; {environment['device']}, "
        f"jax {environment['jax']}. Ratios are against dense attention at the same length in "
        "the same run.",
    ]
    if "load_average_1_5_15_min" in environment:
        lines[-1] += (" Load average over the last 15 minutes at the end of the run: "
                      f"{environment['load_average_1_5_15_min'][2]}.")
    if not any(r.mechanism == "dense" and r.status == "measured" for r in ours):
        lines += ["", "Dense attention was not measured in this run, so there are no ratios."]
    for mode in ("fwd_bwd", "fwd"):
        lines += ["", f"### {MODE_TITLES[mode].capitalize()}: steps/s (speed-up vs dense)", ""]
        lines += _table(header, rows(lambda r, mode=mode: _speed_cell(r, mode)))
    for mode in ("fwd_bwd", "fwd"):
        lines += ["", f"### Temporary memory, {MODE_TITLES[mode]}: MiB (relative to dense)", ""]
        lines += _table(header, rows(lambda r, mode=mode: _memory_cell(r, mode)))
    lines += ["", "### Compile time: s (forward / forward + backward)", ""]
    lines += _table(header, rows(_compile_cell))
    if peers_note is not None:
        lines += ["", "### Peers", "", peers_note]
    elif any(r.source == "peer" for r in records):
        lines += ["", "### Peers", "",
                  "Same shapes and dtype in PyTorch, as many threads as cores; the HF layers' "
                  "input projections are replaced by copies of their input, so both sides time "
                  "the attention alone. Below 1x: ours is faster."]
        paired = [name for name in names if name in PEER_OF]
        for mode in ("fwd_bwd", "fwd"):
            lines += ["", f"#### Ours / peer time, {MODE_TITLES[mode]} (ours / peer ms)", ""]
            lines += _table(
                ["ours vs peer"] + header[1:],
                [[f"{name} vs {PEER_TITLES[PEER_OF[name]]}"]
                 + [_peer_cell(by_key[name, length, "attnx"],
                               by_key.get((PEER_OF[name], length, "peer")), mode)
                    for length in lengths]
                 for name in paired])
    lines += ["", "### Options", ""]
    lines += _table(["mechanism", f"options (lengths {lengths[0]}..{lengths[-1]})"],
                    [[name, _options_text([by_key[name, length, "attnx"].options
                                           for length in lengths])] for name in names])
    notes = []
    for r in records:
        if r.status == "unavailable":
            notes.append(f"- {r.mechanism} at {r.length}: unavailable ({r.message})")
        for mode, timing in r.timings.items():
            if timing.status != "ok":
                notes.append(f"- {r.mechanism} {MODE_TITLES[mode]} at {r.length}: "
                             f"{timing.status} ({timing.message})")
    if notes:
        lines += ["", "### Notes", ""] + notes
    return "\n".join(lines) + "\n"


def plot(records: list[Record], path: str | os.PathLike[str]) -> None:
    """Forward + backward time and temporary memory vs length (log-log), one line per mechanism."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(13, 4.2))
    ours = [r for r in records if r.source == "attnx"]
    colors = {}
    for name in dict.fromkeys(r.mechanism for r in ours):
        ok = [r for r in ours if r.mechanism == name and r.timings.get("fwd_bwd")
              and r.timings["fwd_bwd"].status == "ok"]
        if not ok:
            continue
        lengths = [r.length for r in ok]
        (line,) = ax_time.plot(lengths, [r.timings["fwd_bwd"].time_s * 1e3 for r in ok],
                               "o-", label=name)
        colors[name] = line.get_color()
        with_memory = [r for r in ok if r.timings["fwd_bwd"].temp_bytes is not None]
        ax_memory.plot([r.length for r in with_memory],
                       [max(r.timings["fwd_bwd"].temp_bytes, 1) / 2**20 for r in with_memory],
                       "o-", color=line.get_color(), label=name)
    for peer in dict.fromkeys(r.mechanism for r in records if r.source == "peer"):
        ok = [r for r in records if r.source == "peer" and r.mechanism == peer
              and r.timings["fwd_bwd"].status == "ok"]
        pair = [name for name, p in PEER_OF.items() if p == peer and name in colors]
        if ok:
            ax_time.plot([r.length for r in ok], [r.timings["fwd_bwd"].time_s * 1e3 for r in ok],
                         "x:", color=colors[pair[0]] if len(pair) == 1 else "black",
                         label=PEER_TITLES[peer])
    lengths = sorted({r.length for r in records})
    for ax, title, unit in ((ax_time, "forward + backward time", "ms"),
                            (ax_memory, "temporary memory (forward + backward)", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(length) for length in lengths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    if ax_time.get_lines():  # one legend for both panels: the colours are shared
        fig.legend(*ax_time.get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.81, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment_info(peers: bool) -> dict[str, Any]:
    """Versions and machine facts recorded with the results."""
    device = jax.devices()[0]
    cores = len(os.sched_getaffinity(0))
    info = {
        "jax": jax.__version__,
        "device": (f"cpu, {cores} core{'s' if cores > 1 else ''}" if device.platform == "cpu"
                   else f"{device.platform} ({device.device_kind})"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_memory_bytes": int(psutil.virtual_memory().total),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
    }
    if peers and peers_unavailable_reason() is None:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=cores)
    return info


def run_mechanisms(
    mechanisms: Sequence[registry.Mechanism],
    lengths: Sequence[int],
    *,
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    dtype: str = "float32",
    repeats: int = 5,
    block: int = 64,
    peers: bool = False,
) -> tuple[list[Record], str | None]:
    """The mechanism mode: every mechanism (and, with `peers`, its peer) at every length.

    Returns the records with their ratios filled in, and a note when peers were asked for but
    torch/transformers are not installed (None otherwise).
    """
    if not mechanisms:
        raise ValueError("mechanisms must name at least one mechanism")
    if not lengths or any(length <= 0 for length in lengths):
        raise ValueError(f"lengths must be positive integers, got {list(lengths)}")
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim),
                        ("repeats", repeats), ("block", block)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    peers_note = peers_unavailable_reason() if peers else None
    if peers_note:
        _progress(f"peers skipped: {peers_note}")
    shape = dict(batch=batch, heads=heads, head_dim=head_dim, dtype=dtype, repeats=repeats)
    records = []
    for length in lengths:
        for mechanism in mechanisms:
            options = bench_options(mechanism.name, length, block)
            record = measure(mechanism, length, options=options, **shape)
            records.append(record)
            _progress(_progress_line(record))
        if peers and peers_note is None:
            for peer in dict.fromkeys(PEER_OF[m.name] for m in mechanisms if m.name in PEER_OF):
                pair = next(m.name for m in mechanisms if PEER_OF.get(m.name) == peer)
                record = measure_peer(peer, length, options=bench_options(pair, length, block),
                                      **shape)
                records.append(record)
                _progress(_progress_line(record))
    return add_relative(records), peers_note


def _progress_line(record: Record) -> str:
    if record.status == "unavailable":
        return f"{record.mechanism} L={record.length}: unavailable ({record.message})"
    parts = []
    for mode, t in record.timings.items():
        if t.status == "ok":
            memory = "" if t.temp_bytes is None else f", temp {_fmt_bytes(t.temp_bytes)}"
            compile_s = "" if t.compile_s is None else f"compile {t.compile_s:.2f} s, "
            parts.append(f"{mode}: {compile_s}{_fmt(t.time_s * 1e3)} ms{memory}")
        else:
            parts.append(f"{mode}: {t.status} ({t.message})")
    return f"{record.mechanism} L={record.length}: " + "; ".join(parts)


def write_outputs(records: list[Record], out_dir: str | os.PathLike[str], *, markdown: str,
                  settings: dict[str, Any], environment: dict[str, Any]) -> None:
    """Write out_dir/bench.md, out_dir/bench.json (one record per mechanism and length), bench.png."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown)
    payload = {"settings": settings, "environment": environment,
               "records": [r.to_json() for r in records]}
    (out / "bench.json").write_text(json.dumps(payload, indent=1, allow_nan=False) + "\n")
    plot(records, out / "bench.png")


_MECHANISMS = flags.DEFINE_list("mechanisms", None,
                                "Registry names to benchmark (default: all registered).")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192"], "Sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (after one warm-up).")
_BLOCK = flags.DEFINE_integer("block", 64,
                              "LSH/local chunk length; the Longformer window is twice this.")
_PEERS = flags.DEFINE_boolean("peers", False,
                              "Also time the PyTorch / HF transformers peers (needs attnx[peers]).")
_OUT = flags.DEFINE_string("out", None, "Write bench.md, bench.json and bench.png here.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model-level mode: training throughput and MFU of this config "
    "(configs/x.py[:arg]); --config.a.b=v overrides apply.", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 10, "Model-level mode: timed train steps (after 2 warm-up).")


def run_model(config, *, steps: int, out: str | None, peers: bool = False) -> dict[str, Any]:
    """Model-level mode: measure one config's training throughput; print and optionally save.

    With `peers` (reformer_lm configs), HF's ReformerModelWithLMHead of the same sizes is timed
    in the same run, right after ours.
    """
    if peers:
        reason = peers_unavailable_reason()
        if reason is not None:
            raise app.UsageError(f"--peers: {reason}")
        if config.model.name != "reformer_lm":
            raise app.UsageError(f"--peers with --config compares reformer_lm configs with HF "
                                 f"transformers; config.model.name is {config.model.name!r}")
    _progress(f"model-level benchmark of {config.model.name}: compiling and timing {steps} steps")
    record = bench_model.measure_config(config, steps=steps)
    if peers:
        _progress(f"timing {steps} steps of HF ReformerModelWithLMHead with the same sizes")
        record["peer"] = bench_model.measure_reformer_peer(config, steps=steps)
    markdown = bench_model.format_record(record)
    print(markdown)
    if out:
        path = pathlib.Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.md").write_text(markdown + "\n")
        (path / "model.json").write_text(json.dumps(record, indent=1) + "\n")
        _progress(f"wrote {out}/model.md, model.json")
    return record


def _parse_lengths(values: Sequence[str]) -> list[int]:
    try:
        lengths = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--lengths must be integers, got {','.join(values)}") from None
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"--lengths must be positive integers, got {','.join(values)}")
    return lengths


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is not None:
        run_model(_CONFIG.value, steps=_STEPS.value, out=_OUT.value, peers=_PEERS.value)
        return
    names = _MECHANISMS.value or registry.names()
    mechanisms = [registry.get(name) for name in names]
    settings = dict(mechanisms=names, lengths=_parse_lengths(_LENGTHS.value), batch=_BATCH.value,
                    heads=_HEADS.value, head_dim=_HEAD_DIM.value, dtype=_DTYPE.value,
                    repeats=_REPEATS.value, block=_BLOCK.value, peers=_PEERS.value)
    records, peers_note = run_mechanisms(mechanisms, **{k: v for k, v in settings.items()
                                                         if k != "mechanisms"})
    environment = environment_info(_PEERS.value)
    markdown = to_markdown(records, repeats=_REPEATS.value, environment=environment,
                           peers_note=peers_note)
    print(markdown)
    if _OUT.value:
        write_outputs(records, _OUT.value, markdown=markdown, settings=settings,
                      environment=environment)
        _progress(f"wrote {_OUT.value}/bench.md, bench.json, bench.png")


if __name__ == "__main__":
    app.run(main)
