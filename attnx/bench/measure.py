"""Measurement: one attention mechanism at one sequence length, forward and forward + backward.

Both are jitted; compile time is reported apart from the median time of repeated runs after a
warm-up; temporary memory comes from the compiled executable's memory analysis, which is read
*before* running it, so that a length that would not fit in free memory is reported as "OOM-skip"
instead of waking the kernel's OOM killer. The options of each mechanism are its registry entry's
"bench" preset.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import psutil

from attnx.attention import registry

DTYPES = ("float32", "bfloat16", "float16")
MODES = ("fwd", "fwd_bwd")
# The mechanism the speed and memory ratios are taken against.
BASELINE = "dense"
# Fraction of the free memory a compiled executable may plan to use before it is skipped; the rest
# is headroom for the allocator, the inputs and other processes on a shared machine.
MEMORY_FRACTION = 0.8


def attention_flops(mechanism: registry.Mechanism, record: "Record", mode: str) -> float:
    """FLOPs of one call: scores and weighted sum over the keys each query sees, 4 * keys * H
    per query and head forward; forward + backward 3x that."""
    keys = mechanism.attention_keys(record.options, record.length, False)
    forward = 4.0 * record.batch * record.heads * record.length * keys * record.head_dim
    return forward * (3.0 if mode == "fwd_bwd" else 1.0)


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted `[size, size] @ [size, size]` float32 matmul (median of `repeats`)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


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
      vs_limit: this `time_s` / the matmul-bound limit: the attention's FLOPs (the keys each
        query sees, from the registry; forward + backward counted as 3x the forward) at the
        matmul peak measured in the same run (1 would be physics; ours only).
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
    vs_limit: float | None = None

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
      matmul_peak_flops: FLOP/s of a large float32 matmul measured in the same run, which the
        timings' `vs_limit` is against (ours only; None before it is measured).
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
    matmul_peak_flops: float | None = None

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


def bench_options(mechanism: registry.Mechanism, length: int, block: int = 64) -> dict[str, Any]:
    """The options `mechanism` is benchmarked with at `length`: its registry entry's "bench"
    preset (LSH and local chunks of `block`, a one-sided Longformer window of 2 * `block`)."""
    return mechanism.preset("bench", length=length, block=block)


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def progress(text: str) -> None:
    """A progress line on stderr."""
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def run_times(call: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `call` (which must block until done) after a warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _time_compiled(compiled: Any, args: Sequence[Any], repeats: int) -> list[float]:
    return run_times(lambda: jax.block_until_ready(compiled(*args)), repeats)


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
        return Timing("error", first_line(error))
    stats = compiled.memory_analysis()
    temp = needed = None
    if stats is not None:
        temp = int(stats.temp_size_in_bytes)
        needed = temp + int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes)
        free_bytes = available_memory_bytes(jax.devices()[0])
        if needed > MEMORY_FRACTION * free_bytes:
            return Timing("oom-skip", f"needs {fmt_bytes(needed)}, {fmt_bytes(free_bytes)} free",
                          compile_s=compile_s, temp_bytes=temp, needed_bytes=needed)
    try:
        times = _time_compiled(compiled, args, repeats)
    except Exception as error:  # e.g. a device out-of-memory error on an accelerator
        return Timing("error", first_line(error), compile_s=compile_s, temp_bytes=temp,
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
    options = bench_options(mechanism, length) if options is None else dict(options)
    record = Record(mechanism.name, "attnx", length, batch, heads, head_dim, dtype, options)
    try:
        fn = mechanism.fn
    except Exception as error:  # a missing or half-written module: report it, keep benchmarking
        record.status, record.message = "unavailable", first_line(error)
        return record
    calls = bench_calls(mechanism, fn, options, (batch, length, heads, head_dim), dtype, seed)
    for mode, (function, args) in calls.items():
        record.timings[mode] = _compile_and_time(function, args, repeats)
    return record


def bench_calls(
    mechanism: registry.Mechanism,
    fn: Callable[..., Any],
    options: dict[str, Any],
    shape: tuple[int, int, int, int],
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, tuple[Callable[..., Any], tuple[jax.Array, ...]]]:
    """What the bench times, by mode: "fwd" `(rng, *inputs) -> out` and "fwd_bwd"
    `(rng, cotangent, *inputs) -> (out, input grads)` of the mechanism's function `fn` with
    `options`, each with its arguments: random inputs of `shape` `[B, T, N, H]` (q, k, v, or qk, v
    when the mechanism shares keys and queries) and a random cotangent."""
    call = _mechanism_call(mechanism, fn, options)
    keys = jax.random.split(jax.random.key(seed), 5)
    n_inputs = 2 if mechanism.shared_qk else 3
    inputs = [jax.random.normal(key, shape, dtype) for key in keys[:n_inputs]]
    cotangent = jax.random.normal(keys[3], shape, dtype)
    rng = keys[4]

    def fwd_bwd(rng: jax.Array, cotangent: jax.Array, *inputs: jax.Array) -> Any:
        out, vjp = jax.vjp(lambda *xs: call(rng, *xs), *inputs)
        return out, vjp(cotangent)

    return {"fwd": (call, (rng, *inputs)), "fwd_bwd": (fwd_bwd, (rng, cotangent, *inputs))}


def fmt(x: float) -> str:
    """A number with 3 significant digits (whole numbers from 1000 up)."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def fmt_bytes(n: int) -> str:
    """Bytes in B, KiB, MiB, ... with 3 significant digits."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{fmt(n / 1024**power)} {units[power]}"

