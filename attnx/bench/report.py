"""Reporting: ratios within one run, the Markdown table, the JSON records and the plot."""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import psutil

from attnx.bench.measure import BASELINE, MODES, Record, fmt, fmt_bytes
from attnx.bench.peers import PEER_OF, PEER_TITLES, peers_unavailable_reason

MODE_TITLES = {"fwd": "forward", "fwd_bwd": "forward + backward"}


def add_relative(records: list[Record]) -> list[Record]:
    """Fill speed-up and memory relative to dense, and time relative to the paired peer.

    Ratios use records of the same run at the same length; they stay None where the reference was
    not measured. Returns `records` (updated in place).
    """
    ours = {(r.mechanism, r.length): r for r in records if r.source == "attnx"}
    peers = {(r.mechanism, r.length): r for r in records if r.source == "peer"}
    for record in ours.values():
        dense = ours.get((BASELINE, record.length))
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


def _status_cell(record: Record, mode: str) -> str | None:
    """The cell of a measurement that did not run ("unavailable", "OOM-skip", "error"), else None."""
    if record.status == "unavailable":
        return "unavailable"
    timing = record.timings[mode]
    if timing.status == "oom-skip":
        return f"OOM-skip (needs {fmt_bytes(timing.needed_bytes)})"
    return None if timing.status == "ok" else timing.status


def _speed_cell(record: Record, mode: str) -> str:
    bad = _status_cell(record, mode)
    if bad:
        return bad
    timing = record.timings[mode]
    ratio = "" if timing.speedup_vs_dense is None else f" ({timing.speedup_vs_dense:.2f}x)"
    return f"{fmt(timing.steps_per_s)}{ratio}"


def _limit_cell(record: Record, mode: str = "fwd_bwd") -> str:
    bad = _status_cell(record, mode)
    if bad:
        return bad
    ratio = record.timings[mode].vs_limit
    return "n/a" if ratio is None else f"{ratio:.1f}x"


def _memory_cell(record: Record, mode: str) -> str:
    if record.status == "unavailable":
        return "unavailable"
    timing = record.timings[mode]
    if timing.temp_bytes is None:
        return timing.status if timing.status != "ok" else "n/a"
    ratio = "" if timing.memory_vs_dense is None else f" ({timing.memory_vs_dense:.2f}x)"
    skipped = ", not run" if timing.status == "oom-skip" else ""
    return f"{fmt(timing.temp_bytes / 2**20)}{ratio}{skipped}"


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
    return (f"{timing.vs_peer:.2f}x ({fmt(timing.time_s * 1e3)} / {fmt(other.time_s * 1e3)} "
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
    if environment.get("xla_flags"):
        lines[-1] += f" XLA_FLAGS: `{environment['xla_flags']}`."
    if not any(r.mechanism == BASELINE and r.status == "measured" for r in ours):
        lines += ["", "Dense attention was not measured in this run, so there are no ratios."]
    for mode in ("fwd_bwd", "fwd"):
        lines += ["", f"### {MODE_TITLES[mode].capitalize()}: steps/s (speed-up vs dense)", ""]
        lines += _table(header, rows(lambda r, mode=mode: _speed_cell(r, mode)))
    peak = first.matmul_peak_flops
    if peak:
        lines += ["", "### Forward + backward: time / matmul-bound limit", "",
                  f"The limit is the attention's FLOPs (scores and weighted sums over the keys "
                  f"each query sees; backward 2x forward) at this run's float32 matmul peak, "
                  f"{peak / 1e9:.1f} GFLOP/s: 1x would be physics.", ""]
        lines += _table(header, rows(_limit_cell))
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
        # XLA's flags pick the CPU kernels (attnx/cpu_defaults.py), so they belong to the result.
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if peers and peers_unavailable_reason() is None:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    torch_threads=cores)
    return info


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
