"""Tests of `python -m attnx.bench` on tiny shapes: outputs, same-run ratios, memory skip, peers."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from attnx import bench
from attnx.attention import registry
from attnx.bench import measure, peers, report
from attnx.bench import model as bench_model

LENGTH = 32
SHAPE = dict(heads=2, head_dim=16, repeats=1)
MISSING = registry.Mechanism("missing", "attnx.attention.no_such_module", "attention", "pattern")


def _importable(mechanism: registry.Mechanism) -> bool:
    try:
        getattr(importlib.import_module(mechanism.module), mechanism.function)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Every registered mechanism plus an unimportable one at one tiny length, written to disk."""
    mechanisms = [registry.get(name) for name in registry.names(layout="sequence")] + [MISSING]
    records, note = bench.run_mechanisms(mechanisms, [LENGTH], block=8, **SHAPE)
    out = tmp_path_factory.mktemp("bench")
    environment = report.environment_info(peers=False)
    markdown = report.to_markdown(records, repeats=1, environment=environment, peers_note=note)
    report.write_outputs(records, out, markdown=markdown, settings={"lengths": [LENGTH]},
                        environment=environment)
    return records, out


def _row(markdown: str, section: str, name: str) -> list[str]:
    """Cells of row `name` in the first table after the heading that starts with `section`."""
    text = markdown[markdown.index(f"# {section}"):]  # a heading of any level
    for line in text.splitlines():
        if line.startswith(f"| {name} |"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row {name!r} under {section!r}")


def test_all_outputs_with_every_mechanism(run):
    records, out = run
    markdown = (out / "bench.md").read_text()
    payload = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["environment"]["jax"]
    assert payload["environment"]["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    if os.environ.get("XLA_FLAGS"):
        assert f"XLA_FLAGS: `{os.environ['XLA_FLAGS']}`." in markdown
    by_name = {r["mechanism"]: r for r in payload["records"]}
    assert len(payload["records"]) == len(registry.names(layout="sequence")) + 1
    assert set(by_name) == set(registry.names(layout="sequence")) | {"missing"}
    for name in registry.names(layout="sequence") + ["missing"]:
        record = by_name[name]
        assert record["length"] == LENGTH and record["source"] == "attnx"
        cells = _row(markdown, "Forward + backward: steps/s", name)
        if name == "missing" or not _importable(registry.get(name)):
            assert record["status"] == "unavailable" and record["message"]
            assert cells == ["unavailable"]
            continue
        assert record["status"] == "measured"
        for mode in measure.MODES:
            timing = record["timings"][mode]
            assert timing["status"] == "ok", (name, mode, timing["message"])
            assert 0 < timing["min_s"] <= timing["time_s"] and timing["compile_s"] > 0
            assert timing["steps_per_s"] == pytest.approx(1 / timing["time_s"], rel=1e-12)
            assert isinstance(timing["temp_bytes"], int) and timing["temp_bytes"] >= 0
        assert cells[0].startswith(measure.fmt(1 / record["timings"]["fwd_bwd"]["time_s"]))
    assert "no_such_module" in markdown  # the note says why "missing" is unavailable


def test_options_table_defaults():
    assert measure.bench_options(registry.get("lsh"), 1024) == {"chunk_len": 64, "n_hashes": 2, "n_buckets": 16}
    assert measure.bench_options(registry.get("lsh"), 192)["n_buckets"] == 2  # 192 / 64 = 3, rounded down to even
    assert measure.bench_options(registry.get("local"), 2048) == {"chunk_len": 64}
    assert measure.bench_options(registry.get("longformer"), 4096) == {"window": 128}
    assert measure.bench_options(registry.get("flash"), 8192) == {"implementation": "xla"}
    assert measure.bench_options(registry.get("dense"), 1024) == {}


def test_relative_columns_are_ratios_to_dense_of_the_same_run(run):
    _, out = run
    markdown = (out / "bench.md").read_text()
    records = json.loads((out / "bench.json").read_text())["records"]
    dense = next(r for r in records if r["mechanism"] == "dense")["timings"]
    measured = [r for r in records if r["status"] == "measured"]
    assert len(measured) >= 2
    for record in measured:
        for mode in measure.MODES:
            timing = record["timings"][mode]
            speedup = dense[mode]["time_s"] / timing["time_s"]
            assert timing["speedup_vs_dense"] == pytest.approx(speedup, rel=1e-12)
            memory = timing["temp_bytes"] / dense[mode]["temp_bytes"]
            assert timing["memory_vs_dense"] == pytest.approx(memory, rel=1e-12)
            title = report.MODE_TITLES[mode]
            speed_cell = _row(markdown, f"{title.capitalize()}: steps/s", record["mechanism"])[0]
            assert speed_cell.endswith(f"({speedup:.2f}x)")
            memory_cell = _row(markdown, f"Temporary memory, {title}:", record["mechanism"])[0]
            assert memory_cell.endswith(f"({memory:.2f}x)")
    assert dense["fwd_bwd"]["speedup_vs_dense"] == 1.0


def test_matmul_bound_limit_by_hand(run):
    """dense: 3 x 4 x B x N x T x T x H FLOPs forward + backward (B = 1), at the matmul peak."""
    _, out = run
    markdown = (out / "bench.md").read_text()
    records = json.loads((out / "bench.json").read_text())["records"]
    dense = next(r for r in records if r["mechanism"] == "dense")
    peak = dense["matmul_peak_flops"]
    flops = 3 * 4 * 1 * SHAPE["heads"] * LENGTH * LENGTH * SHAPE["head_dim"]
    timing = dense["timings"]["fwd_bwd"]
    assert timing["vs_limit"] == pytest.approx(timing["time_s"] * peak / flops, rel=1e-9)
    assert timing["vs_limit"] > 1.0  # nothing beats the matmul peak
    cell = _row(markdown, "Forward + backward: time / matmul-bound limit", "dense")[0]
    assert cell == f"{timing['vs_limit']:.1f}x"


def _synthetic(name: str, length: int, fwd_s: float, temp: int, source: str = "attnx"):
    record = measure.Record(name, source, length, 1, 1, 8, "float32", {})
    record.timings = {mode: measure.Timing("ok", time_s=fwd_s * (1 + i), temp_bytes=temp)
                      for i, mode in enumerate(measure.MODES)}
    return record


def test_add_relative_pairs_rows_of_the_same_length():
    records = [_synthetic("dense", 16, 2.0, 400), _synthetic("dense", 32, 8.0, 1600),
               _synthetic("local", 16, 1.0, 100), _synthetic("local", 32, 2.0, 200),
               _synthetic("hf_local", 32, 4.0, 0, source="peer")]
    records[0].timings["fwd"] = measure.Timing("oom-skip", temp_bytes=400, needed_bytes=500)
    by_key = {(r.mechanism, r.length): r for r in report.add_relative(records)}
    local_32 = by_key["local", 32].timings
    assert local_32["fwd"].speedup_vs_dense == 4.0 and local_32["fwd"].memory_vs_dense == 0.125
    assert local_32["fwd_bwd"].speedup_vs_dense == 4.0
    assert local_32["fwd"].vs_peer == 0.5 and by_key["local", 32].peer == "hf_local"
    local_16 = by_key["local", 16].timings
    assert local_16["fwd"].speedup_vs_dense is None  # dense forward was skipped at 16
    assert local_16["fwd_bwd"].speedup_vs_dense == 2.0 and local_16["fwd_bwd"].memory_vs_dense == 0.25
    assert local_16["fwd"].vs_peer is None and by_key["local", 16].peer is None


def test_memory_skip_does_not_run(monkeypatch):
    monkeypatch.setattr(measure, "available_memory_bytes", lambda device: 1024)

    def must_not_run(*args, **kwargs):
        raise AssertionError("an executable that does not fit was run")

    monkeypatch.setattr(measure, "_time_compiled", must_not_run)
    record = measure.measure(registry.get("dense"), 64, **SHAPE)
    for timing in record.timings.values():
        assert timing.status == "oom-skip" and timing.time_s is None
        assert timing.needed_bytes > measure.MEMORY_FRACTION * 1024
        assert timing.temp_bytes > 0 and "needs" in timing.message
    markdown = report.to_markdown(report.add_relative([record]), repeats=1,
                                 environment={"device": "cpu", "jax": "x"})
    assert "OOM-skip (needs" in _row(markdown, "Forward + backward: steps/s", "dense")[0]


def test_trace_error_is_a_record_not_a_crash():
    record = measure.measure(registry.get("dense"), 16, options={"no_such_option": 1}, **SHAPE)
    for timing in record.timings.values():
        assert timing.status == "error" and "no_such_option" in timing.message


def test_invalid_arguments_raise_early():
    with pytest.raises(ValueError, match="dtype"):
        bench.run_mechanisms([registry.get("dense")], [16], dtype="float64")
    with pytest.raises(ValueError, match="lengths"):
        bench.run_mechanisms([registry.get("dense")], [0])
    with pytest.raises(ValueError, match="repeats"):
        bench.run_mechanisms([registry.get("dense")], [16], repeats=0)
    with pytest.raises(ValueError, match="peer must be one of"):
        peers.measure_peer("hf_bigbird", 16)


def test_peers_missing_is_said_and_the_run_goes_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    records, note = bench.run_mechanisms([registry.get("dense")], [16], peers=True, **SHAPE)
    assert "torch" in note and "attnx[peers]" in note
    assert [r.source for r in records] == ["attnx"] and records[0].timings["fwd"].status == "ok"
    markdown = report.to_markdown(records, repeats=1, environment={"device": "cpu", "jax": "x"},
                                 peers_note=note)
    assert note in markdown[markdown.index("### Peers"):]


def test_peers_run_and_ratios():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    length, block = 64, 8  # HF Longformer needs the length to be a multiple of 2 * window
    for peer, ours in (("hf_lsh", "lsh"), ("hf_local", "local"), ("hf_longformer", "longformer")):
        record = peers.measure_peer(peer, length, options=measure.bench_options(registry.get(ours), length, block),
                                    **SHAPE)
        for timing in record.timings.values():
            assert timing.status == "ok" and timing.time_s > 0, (peer, timing.message)
    records, note = bench.run_mechanisms([registry.get("dense")], [length], peers=True, **SHAPE)
    assert note is None
    dense, sdpa = records
    assert (sdpa.mechanism, sdpa.source, dense.peer) == ("sdpa", "peer", "sdpa")
    for mode in measure.MODES:
        ratio = dense.timings[mode].time_s / sdpa.timings[mode].time_s
        assert dense.timings[mode].vs_peer == pytest.approx(ratio, rel=1e-12)
    markdown = report.to_markdown(records, repeats=1, environment=report.environment_info(True))
    cell = _row(markdown, "Ours / peer time, forward + backward",
                "dense vs torch scaled_dot_product_attention")[0]
    assert cell.startswith(f"{dense.timings['fwd_bwd'].vs_peer:.2f}x")


def test_command_line(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "attnx.bench", "--mechanisms=dense", "--lengths=16,32",
         "--heads=1", "--head_dim=8", "--repeats=1", f"--out={out}"],
        capture_output=True, text=True, env=env, cwd=pathlib.Path(__file__).parents[1],
        timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| dense | " in result.stdout
    assert "[bench] dense L=16" in result.stderr and "[bench] dense L=32" in result.stderr
    records = json.loads((out / "bench.json").read_text())["records"]
    assert [(r["mechanism"], r["length"]) for r in records] == [("dense", 16), ("dense", 32)]
    assert (out / "bench.md").read_text() in result.stdout
    assert (out / "bench.png").stat().st_size > 0


def test_model_level_mode_on_synthetic_images_needs_no_data(tmp_path):
    """MaxViT on ImageNet's shapes (mock metadata), nothing prepared: examples/s and XLA's
    FLOP count."""
    import tensorflow_datasets as tfds

    from helpers import load_config

    config = load_config("maxvit_imagenet", "variant=T")
    config.data.update(image_size=32, data_dir=str(tmp_path / "tfds"))
    config.model.update(stem_width=8, channels=(16,), depths=(1,), window=2, grid=2, head_dim=8)
    config.batch_size = 4
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        record = bench_model.measure_config(config, steps=1, warmup=1, synthetic=True)
    assert not (tmp_path / "tfds").exists()
    assert (record["unit"], record["flops_source"], record["synthetic"]) == (
        "examples", "XLA cost analysis", True)
    assert record["examples_per_s"] == pytest.approx(4 / record["step_s"])
    assert record["model_tflops_per_step"] > 0
    assert "random batches" in bench_model.format_record(record)


def test_model_level_mode_reports_throughput_and_mfu(tmp_path):
    import json as json_lib

    from helpers import load_config

    config = load_config("transformer_lm", "smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    record = bench_model.run_model(config, steps=2, out=str(tmp_path / "out"))
    tokens = config.batch_size * config.data.seq_len
    assert record["tokens_per_s"] == pytest.approx(tokens / record["step_s"])
    assert 0.0 < record["mfu"] < 2.0
    saved = json_lib.loads((tmp_path / "out" / "model.json").read_text())
    assert saved["model"] == "transformer_lm"
    # Hand count for a 1-layer dense LM, d=8, d_ff=16, vocab 4, T=10, causal:
    # dense params 4*8*8 + 2*8*16 + 8*4 = 544; attention 4 * 8 * T/2 = 160 FLOPs per token.
    import ml_collections
    model_cfg = ml_collections.ConfigDict(dict(attention="dense", num_layers=1, d_model=8,
                                               attention_options={}))
    params = {"attn": {"q": np.zeros((8, 8)), "k": np.zeros((8, 8)), "v": np.zeros((8, 8)),
                       "o": np.zeros((8, 8))},
              "ff": {"wi": np.zeros((8, 16)), "wo": np.zeros((16, 8))},
              "head": np.zeros((8, 4)), "embed": {"embedding": np.zeros((4, 8))},
              "norm": np.zeros((8,))}
    assert bench_model.train_flops_per_token(params, model_cfg, 10, True) == 3 * (2 * 544 + 160)


def test_model_level_mode_times_clip_models_and_their_memory(data_dir):
    from helpers import load_config

    config = load_config("video_divided", "smoke")
    config.data.data_dir = data_dir
    record = bench_model.run_model(config, steps=1, out=None)
    assert record["step_s"] > 0 and record["temp_bytes"] > 0
    assert record["unit"] == "examples" and record["seq_len"] is None
    assert record["examples_per_s"] == pytest.approx(config.batch_size / record["step_s"])
    assert "| temporary memory (XLA plan) |" in bench_model.format_record(record)


def test_model_level_peer_is_hf_reformer_of_the_same_size(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from helpers import load_config

    with pytest.raises(app.UsageError, match="reformer_lm"):
        bench_model.run_model(load_config("transformer_lm", "smoke"), steps=1, out=None, peers=True)
    config = load_config("reformer_lm", "smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    record = bench_model.run_model(config, steps=1, out=None, peers=True)
    peer = record["peer"]
    # Same architecture and sizes: the two models hold exactly as many parameters.
    assert peer["parameters"] == record["parameters"]
    assert peer["tokens_per_s"] == pytest.approx(config.data.seq_len * config.batch_size
                                                 / peer["step_s"])
    ratio = record["tokens_per_s"] / peer["tokens_per_s"]
    assert f"| attnx / peer throughput (same run) | {ratio:.2f}x |" in (
        bench_model.format_record(record))
