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

The second form is the model-level mode (`attnx.bench.model`): training steps/s, tokens/s and the
fraction of the machine's matmul peak (measured in the same run) that a config reaches.

On a busy machine, `taskset -c 0 python -m attnx.bench --peers` gives XLA and torch one core each
(no thread synchronisation under contention), the fairest peer comparison there.

`--peers` runs HF transformers' `LSHSelfAttention`, `LocalSelfAttention`, `LongformerSelfAttention`
and PyTorch's `scaled_dot_product_attention` at the same settings (install the `peers` extra) and
adds "ours / peer" time ratios. With `--out=DIR` the table, one JSON record per mechanism and
length, and a plot go to DIR/bench.md, DIR/bench.json and DIR/bench.png.

The package: `measure` (one mechanism at one length -> `Record`, with the registry's "bench"
options), `peers` (the PyTorch / HF peers), `report` (ratios within one run, Markdown, JSON, plot),
`model` (the model-level mode); `run_mechanisms` here is the mechanism mode, and `__main__` only
parses flags.
"""

from __future__ import annotations

from typing import Sequence

from attnx.attention import registry
from attnx.bench import measure
from attnx.bench.measure import DTYPES, Record, bench_options, fmt, fmt_bytes, progress
from attnx.bench.peers import PEER_OF, measure_peer, peers_unavailable_reason
from attnx.bench.report import add_relative


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
        progress(f"peers skipped: {peers_note}")
    shape = dict(batch=batch, heads=heads, head_dim=head_dim, dtype=dtype, repeats=repeats)
    records = []
    for length in lengths:
        for mechanism in mechanisms:
            options = bench_options(mechanism, length, block)
            record = measure.measure(mechanism, length, options=options, **shape)
            records.append(record)
            progress(_progress_line(record))
        if peers and peers_note is None:
            for peer in dict.fromkeys(PEER_OF[m.name] for m in mechanisms if m.name in PEER_OF):
                pair = next(m for m in mechanisms if PEER_OF.get(m.name) == peer)
                record = measure_peer(peer, length, options=bench_options(pair, length, block),
                                      **shape)
                records.append(record)
                progress(_progress_line(record))
    progress("timing a 2048 x 2048 float32 matmul: the peak the matmul-bound limits use")
    peak = measure.matmul_peak_flops()
    by_name = {m.name: m for m in mechanisms}
    for record in records:
        if record.source != "attnx" or record.status != "measured":
            continue
        record.matmul_peak_flops = peak
        for mode, timing in record.timings.items():
            if timing.time_s is not None:
                limit_s = measure.attention_flops(by_name[record.mechanism], record, mode) / peak
                timing.vs_limit = timing.time_s / limit_s
    return add_relative(records), peers_note


def _progress_line(record: Record) -> str:
    if record.status == "unavailable":
        return f"{record.mechanism} L={record.length}: unavailable ({record.message})"
    parts = []
    for mode, t in record.timings.items():
        if t.status == "ok":
            memory = "" if t.temp_bytes is None else f", temp {fmt_bytes(t.temp_bytes)}"
            compile_s = "" if t.compile_s is None else f"compile {t.compile_s:.2f} s, "
            parts.append(f"{mode}: {compile_s}{fmt(t.time_s * 1e3)} ms{memory}")
        else:
            parts.append(f"{mode}: {t.status} ({t.message})")
    return f"{record.mechanism} L={record.length}: " + "; ".join(parts)
