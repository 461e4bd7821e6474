"""Peers: HF transformers' attention layers and PyTorch's scaled_dot_product_attention, timed at the
same settings as our mechanisms (the `peers` extra: torch, transformers).
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Callable

from attnx.bench.measure import MODES, Record, Timing, first_line, run_times

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


def torch_peer(name: str, length: int, batch: int, heads: int, head_dim: int, dtype: str,
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
        return f"{first_line(error)} (install attnx[peers] for the peer comparison)"
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
        forward, forward_backward = torch_peer(name, length, batch, heads, head_dim, dtype,
                                                options)
        for mode, call in (("fwd", forward), ("fwd_bwd", forward_backward)):
            times = run_times(call, repeats)
            record.timings[mode] = Timing("ok", time_s=statistics.median(times), min_s=min(times))
    except Exception as error:  # a peer that rejects these settings is a table entry
        record.timings = {mode: Timing("error", first_line(error)) for mode in MODES}
    return record

