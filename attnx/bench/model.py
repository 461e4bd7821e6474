"""Model-level benchmark: training throughput of a named config against the machine's matmul peak.

    python -m attnx.bench --config=configs/transformer_lm.py[:arg] [--steps=20]
    python -m attnx.bench --config=configs/reformer_lm.py --peers   # + HF ReformerModelWithLMHead
    python -m attnx.bench --config=configs/maxvit_imagenet.py --synthetic --config.batch_size=8

Measures the median step time of the jitted, donated train step on real batches of the config's
dataset (after a warm-up, compile time reported separately), the step's temporary memory as XLA
plans it, tokens/s (examples/s for images and clips), and the fraction of the machine's matmul
throughput it reaches (model FLOPs utilisation).
`--synthetic` times random batches of the shapes the dataset would serve (`data.describe`: its
metadata, no data needed), for datasets not prepared here such as ImageNet. The peak is measured in
the same run with a large float32 matmul. The FLOPs of sequence models (attention layers over
tokens) are counted analytically (XLA's cost analysis counts a scan body once), as 3x the forward
matmul FLOPs: 2 per parameter of every dense layer per token, plus the attention scores and
weighted sums over the keys each query actually sees; those of image and video models (no scan)
are XLA's cost analysis of the compiled step.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import time
from typing import Any

import jax
import numpy as np
from absl import app

from attnx import data, optim, train
from attnx import state as state_lib
from attnx.attention import registry
from attnx.bench.measure import matmul_peak_flops, progress
from attnx.bench.peers import peers_unavailable_reason


def train_flops_per_token(params, model_config, length: int, causal: bool) -> float:
    """Analytic training FLOPs per token: 3 x (2 x dense-layer params + attention)."""
    dense_params = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                       if leaf.ndim == 2 and "embed" not in jax.tree_util.keystr(path))
    layer_mechanisms = list(model_config.get("attn_layers") or
                            [model_config.get("attention", "dense")] * model_config.num_layers)
    d_model = model_config.d_model
    attention = 0.0
    for name in layer_mechanisms:
        options = dict(model_config.get(f"{name}_options") or
                       model_config.get("attention_options") or {})
        attention += 4 * d_model * registry.get(name).attention_keys(options, length, causal)
    return 3 * (2 * dense_params + attention)


def synthetic_batch(info: data.DataInfo, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Random rows of every feature of `info`: floats in [0, 1), masks True, labels below
    `num_classes`, other ints below `vocab_size`, weights 1."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name, feature in info.features.items():
        shape = (batch_size, *feature.shape)
        if name == "weights":
            batch[name] = np.ones(shape, np.float32)
        elif feature.dtype == "bool":
            batch[name] = np.ones(shape, bool)
        elif np.issubdtype(np.dtype(feature.dtype), np.integer):
            high = info.num_classes if name == "label" else info.vocab_size
            batch[name] = rng.integers(0, high or 2, shape).astype(feature.dtype)
        else:
            batch[name] = rng.random(shape).astype(feature.dtype)
    return batch


def _sequence_model(model_config) -> bool:
    """Whether the model attends over token sequences (the analytic FLOP count applies)."""
    return model_config.get("attn_layers") is not None or model_config.get("num_layers") is not None


@dataclasses.dataclass
class TrainSetup:
    """What timing a config's training needs: its compiled step, state and batches."""

    compiled: Any  # (state, batch, key) -> (state, metrics), compiled, state donated
    compile_s: float
    state: Any
    params: Any
    batches: list[Any]
    seq_len: int | None  # None for images and clips
    causal: bool  # whether the model's attention is causal (for the FLOP count)
    cost_flops: float  # XLA's cost analysis of the compiled step (scan bodies counted once)
    temp_bytes: int | None  # the compiled step's temporary memory (None: not reported)


def _train_setup(config, steps: int, synthetic: bool = False) -> TrainSetup:
    """The state, `steps` sharded batches and compiled train step of `config` (no checkpoints);
    random batches of the dataset's shapes with `synthetic`.

    Every call into `attnx.train` and the model registry's tasks is here, in one place.
    """
    train.validate(config)
    info = data.describe(config.data) if synthetic else None
    dataset = None if synthetic else data.build(config.data, seed=config.seed)
    info = info or dataset.info
    train.validate(config, info)
    task = state_lib.check_data(config, info)
    mesh = train.data_mesh()
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state, _ = state_lib.create(config, info, tx, mesh)
    params = state["params"]
    step_fn = jax.jit(train.make_train_step(graphdef, task, tx, schedule,
                                            grad_accum_steps=config.grad_accum_steps),
                      donate_argnums=(0,))
    def rows(i: int) -> dict[str, np.ndarray]:
        if synthetic:
            return synthetic_batch(info, config.batch_size, seed=i)
        return dataset.train_batch(i, global_batch_size=config.batch_size)

    batches = [jax.device_put(rows(i), batch_sharding) for i in range(steps)]
    key = jax.random.key(config.seed)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batches[0], key).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list on older JAX
    memory = compiled.memory_analysis()
    return TrainSetup(compiled, compile_s, state, params, batches, info.seq_len,
                      causal=task.causal, cost_flops=float((cost or {}).get("flops", 0.0)),
                      temp_bytes=None if memory is None else int(memory.temp_size_in_bytes))


def measure_config(config, *, steps: int = 10, warmup: int = 2,
                   synthetic: bool = False) -> dict[str, Any]:
    """Train `steps` steps of `config` (no checkpoints, no eval) and report throughput and MFU;
    on random batches of the dataset's shapes with `synthetic`."""
    setup = _train_setup(config, steps + warmup, synthetic)
    key = jax.random.key(config.seed)
    state, times = setup.state, []
    for i, batch in enumerate(setup.batches):
        start = time.perf_counter()
        state, metrics = setup.compiled(state, batch, key)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    if setup.seq_len is not None and _sequence_model(config.model):
        unit, count = "tokens", config.batch_size * setup.seq_len
        flops = train_flops_per_token(setup.params, config.model, setup.seq_len,
                                      setup.causal) * count
        flops_source = "analytic"
    else:
        unit, count = "examples", config.batch_size
        flops, flops_source = float(setup.cost_flops), "XLA cost analysis"
    peak = matmul_peak_flops()
    return {
        "model": config.model.name, "seq_len": setup.seq_len, "batch_size": config.batch_size,
        "synthetic": synthetic, "unit": unit, "flops_source": flops_source,
        "compile_s": setup.compile_s, "step_s": step_s, "steps_per_s": 1 / step_s,
        "temp_bytes": setup.temp_bytes, f"{unit}_per_s": count / step_s,
        "model_tflops_per_step": flops / 1e12,
        "peak_matmul_gflops": peak / 1e9, "mfu": flops / step_s / peak,
        "final_loss": float(metrics["loss"]), "devices": jax.device_count(),
        "parameters": sum(leaf.size for leaf in jax.tree.leaves(setup.params)),
    }


def measure_reformer_peer(config, *, steps: int = 10, warmup: int = 2) -> dict[str, Any]:
    """Training throughput of HF transformers' `ReformerModelWithLMHead` sized like `config`.

    For `reformer_lm` configs: the same layers, widths, chunking, hashing, axial positions,
    dropout, batch and length, AdamW at the config's learning rate, in training mode (HF's
    reversible backward), on random byte ids. Needs the `peers` extra (torch, transformers).
    """
    import torch  # The peers extra; imported here so the benchmark runs without it.
    from transformers import ReformerConfig as HFReformerConfig
    from transformers import ReformerModelWithLMHead

    model_config = config.model
    if model_config.name != "reformer_lm":
        raise ValueError(f"--peers in model mode compares reformer_lm with HF transformers; "
                         f"config.model.name is {model_config.name!r}")
    lsh, local = model_config.lsh_options, model_config.local_options
    length, batch_size = config.data.seq_len, config.batch_size
    n_buckets = lsh.n_buckets if isinstance(lsh.n_buckets, int) else list(lsh.n_buckets)
    hf_config = HFReformerConfig(
        vocab_size=256, hidden_size=model_config.d_model,
        num_attention_heads=model_config.num_heads,
        attention_head_size=model_config.head_dim or model_config.d_model // model_config.num_heads,
        feed_forward_size=model_config.d_ff, attn_layers=list(model_config.attn_layers),
        axial_pos_embds=True, axial_pos_shape=tuple(model_config.axial_shape),
        axial_pos_embds_dim=tuple(model_config.axial_dims), max_position_embeddings=length,
        lsh_attn_chunk_length=lsh.chunk_len, num_hashes=lsh.n_hashes, num_buckets=n_buckets,
        lsh_num_chunks_before=lsh.chunks_before, lsh_num_chunks_after=lsh.chunks_after,
        local_attn_chunk_length=local.chunk_len, local_num_chunks_before=local.chunks_before,
        local_num_chunks_after=local.chunks_after, is_decoder=True,
        hidden_act=model_config.activation, hidden_dropout_prob=model_config.dropout_rate,
        lsh_attention_probs_dropout_prob=model_config.attention_dropout,
        local_attention_probs_dropout_prob=model_config.attention_dropout,
        chunk_size_feed_forward=model_config.ff_chunk_len or 0, chunk_size_lm_head=0)
    torch.manual_seed(config.seed)
    model = ReformerModelWithLMHead(hf_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.learning_rate)
    ids = torch.randint(0, 256, (batch_size, length))
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {"model": "HF ReformerModelWithLMHead", "step_s": step_s,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokens_per_s": batch_size * length / step_s, "final_loss": float(loss.detach()),
            "torch_threads": torch.get_num_threads()}


def _rate(per_s: float) -> str:
    """5,512 -> '5,512'; 0.4072 -> '0.407'."""
    return f"{per_s:,.0f}" if per_s >= 100 else f"{per_s:.3g}"


def format_record(record: dict[str, Any]) -> str:
    """A Markdown table of one model-level record."""
    temp = record.get("temp_bytes")
    rows = [
        ("model", record["model"]),
        ("input", "random batches of the dataset's shapes" if record.get("synthetic")
         else "the dataset's train batches"),
        ("sequence length", record["seq_len"] if record["seq_len"] is not None else "-"),
        ("global batch", record["batch_size"]), ("devices", record["devices"]),
        ("compile", f"{record['compile_s']:.1f} s"),
        ("step time (median)", f"{record['step_s'] * 1e3:.1f} ms"),
        ("steps/s", f"{record['steps_per_s']:.2f}"),
        ("temporary memory (XLA plan)", "-" if temp is None else f"{temp / 2**20:.1f} MiB"),
        (f"{record['unit']}/s", _rate(record[record["unit"] + "_per_s"])),
        ("model FLOPs counted by", record["flops_source"]),
        ("model FLOPs per step", f"{record['model_tflops_per_step'] * 1e3:.1f} GFLOP"),
        ("matmul peak (same run)", f"{record['peak_matmul_gflops']:.1f} GFLOP/s"),
        ("fraction of peak (MFU)", f"{record['mfu']:.1%}"),
    ]
    peer = record.get("peer")
    if peer is not None:
        rows += [
            (f"peer: {peer['model']} step time (median)", f"{peer['step_s'] * 1e3:.1f} ms"),
            ("peer: tokens/s", f"{peer['tokens_per_s']:,.0f} (torch threads "
                               f"{peer['torch_threads']})"),
            ("attnx / peer throughput (same run)",
             f"{record['tokens_per_s'] / peer['tokens_per_s']:.2f}x"),
        ]
    return "\n".join(["| quantity | value |", "|---|---|"] +
                     [f"| {k} | {v} |" for k, v in rows])


def run_model(config, *, steps: int, out: str | None, peers: bool = False,
              synthetic: bool = False) -> dict[str, Any]:
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
    progress(f"model-level benchmark of {config.model.name}: compiling and timing {steps} steps")
    record = measure_config(config, steps=steps, synthetic=synthetic)
    if peers:
        progress(f"timing {steps} steps of HF ReformerModelWithLMHead with the same sizes")
        record["peer"] = measure_reformer_peer(config, steps=steps)
    markdown = format_record(record)
    print(markdown)
    if out:
        path = pathlib.Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.md").write_text(markdown + "\n")
        (path / "model.json").write_text(json.dumps(record, indent=1) + "\n")
        progress(f"wrote {out}/model.md, model.json")
    return record
