"""Where one mechanism's time goes: the XLA ops of its bench function, by time per call.

Traces `--calls` calls of what `python -m attnx.bench` times (forward, or forward + backward, on
the bench's inputs and options) with `jax.profiler`, and prints each compiled HLO op's time per
call, how often it ran per call and, for products (dots, and fusions that contain dots, as
YNNPACK's do), the GFLOP/s it reached, so a disappointing figure can be traced to the products,
the element-wise passes or the layout copies around them.

    python scripts/profile_ops.py --mechanism=longformer --length=4096 [--mode=fwd_bwd]
        [--calls=10] [--top=25] [--batch=1 --heads=4 --head_dim=64]

Times are the profiler's (tracing slows calls a little) and an op's time includes waiting for the
thread pool while XLA runs other ops side by side, so the column can add up to more than the
wall time per call; compare profiles of the same run, on an otherwise idle machine. With
`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` (products on one thread each) the ops' times add
up to the wall time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import re
import tempfile
import time

import jax

from attnx.attention import registry
from attnx.bench import measure

# `%name = f32[4,128,384]{2,1,0} dot(%a, %b), lhs_batch_dims=..., lhs_contracting_dims={2}, ...`
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+)\((.*)$")
# `%fused_computation.4 (param_0: f32[4,128,64], ...) -> f32[4,128,384] {`
_COMPUTATION = re.compile(r"^\s*(?:ENTRY )?%(\S+) \(.*\{\s*$")


@dataclasses.dataclass
class OpTime:
    """One HLO op's profile: total microseconds over all traced calls, and how often it ran."""

    name: str
    opcode: str
    total_us: float = 0.0
    count: int = 0
    flops: float | None = None  # per execution: a dot's, or the dots' inside a fusion


def hlo_ops(hlo_text: str) -> dict[str, OpTime]:
    """The instructions of compiled HLO text, by name, with the FLOPs (2 x output elements x
    contracted size) of each dot and of each fusion that contains dots (e.g. a library fusion)."""
    shapes: dict[str, tuple[int, ...]] = {}
    ops: dict[str, OpTime] = {}
    computation_flops: collections.Counter[str] = collections.Counter()
    calls: dict[str, str] = {}
    computation = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            computation = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, _, dims, opcode, rest = match.groups()
        shapes[name] = tuple(int(d) for d in dims.split(",") if d)
        ops[name] = OpTime(name, opcode)
        called = re.search(r"calls=%([^,\s]+)", rest)
        if called:
            calls[name] = called.group(1)
        if opcode == "dot":
            lhs = re.match(r"%([^,\s)]+)", rest).group(1)
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
            contracted = math.prod(shapes[lhs][int(i)] for i in contracting.split(",") if i)
            ops[name].flops = 2.0 * math.prod(shapes[name]) * contracted
            computation_flops[computation] += ops[name].flops
    for name, called in calls.items():
        if computation_flops[called]:
            ops[name].flops = float(computation_flops[called])
    return ops


def profile(function, args, calls: int) -> tuple[list[OpTime], float]:
    """Per-op profile of `calls` calls of jitted `function(*args)`: the ops (slowest first) and
    the mean wall time per traced call in microseconds."""
    compiled = jax.jit(function).lower(*args).compile()
    ops = hlo_ops(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
            wall_us = 1e6 * (time.perf_counter() - start) / calls
        (path,) = glob.glob(f"{log_dir}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    for event in events:
        op = ops.get(event.get("name"))
        if event.get("ph") == "X" and op is not None:
            op.total_us += event["dur"]
            op.count += 1
    ran = sorted((op for op in ops.values() if op.count), key=lambda op: -op.total_us)
    return ran, wall_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanism", required=True, help="registry name, e.g. longformer")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--mode", choices=measure.MODES, default="fwd_bwd")
    parser.add_argument("--calls", type=int, default=10, help="traced calls (after 2 untraced)")
    parser.add_argument("--top", type=int, default=25, help="ops to print")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    args = parser.parse_args()
    if args.calls < 1:
        parser.error(f"--calls must be >= 1, got {args.calls}")
    mechanism = registry.get(args.mechanism)
    options = measure.bench_options(mechanism, args.length)
    shape = (args.batch, args.length, args.heads, args.head_dim)
    function, inputs = measure.bench_calls(mechanism, mechanism.fn, options, shape)[args.mode]
    ops, wall_us = profile(function, inputs, args.calls)
    print(f"{args.mechanism} {args.mode}, [B, T, N, H] = {list(shape)}, options {options}: "
          f"{wall_us / 1e3:.1f} ms per traced call; {len(ops)} ops ran")
    print("| op | kind | ms per call | runs per call | GFLOP/s |")
    print("|---|---|---|---|---|")
    for op in ops[:args.top]:
        rate = "" if op.flops is None else f"{op.flops * op.count / (op.total_us * 1e3):.0f}"
        print(f"| {op.name} | {op.opcode} | {op.total_us / args.calls / 1e3:.2f} | "
              f"{op.count / args.calls:g} | {rate} |")
    shown = sum(op.total_us for op in ops[:args.top]) / args.calls / 1e3
    print(f"(the {min(args.top, len(ops))} ops shown: {shown:.1f} ms per call)")


if __name__ == "__main__":
    main()
