"""Single-threaded CPU time of local and LSH attention (forward + backward) against HF's layers.

    taskset -c 1 python scripts/cpu_time_vs_peers.py [--length=4096] [--calls=10]

Process CPU time, not wall time, over `--calls` calls after one warm-up, on one core (run it
under `taskset` so XLA sizes its pool to one thread; torch is set to one thread): a measure of the
work each library does that other processes on the machine barely distort. The shapes and
options are the bench's (`python -m attnx.bench --peers`): batch 1, 4 heads of 64, float32,
chunks of 64 seeing the chunk before, LSH with 2 rounds and length / 64 buckets. Needs the
`peers` extra (torch, transformers).
"""

from __future__ import annotations

import time
from typing import Callable

import jax
from absl import app, flags

from attnx.attention import local, lsh, registry
from attnx.bench import measure, peers

flags.DEFINE_integer("length", 4096, "Sequence length.")
flags.DEFINE_integer("calls", 10, "Timed calls (after one warm-up).")
FLAGS = flags.FLAGS


def cpu_ms(call: Callable[[], object], calls: int) -> float:
    """Mean process CPU time of `call()` in ms (it must block until done)."""
    call()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) / calls * 1e3


def main(argv: list[str]) -> None:
    del argv
    import torch

    torch.set_num_threads(1)
    length, heads, head_dim = FLAGS.length, 4, 64
    q, k, v, cotangent = (jax.random.normal(key, (1, length, heads, head_dim))
                          for key in jax.random.split(jax.random.key(0), 4))
    options = {name: measure.bench_options(registry.get(name), length)
               for name in ("local", "lsh")}
    ours = {
        "local": lambda q, k, v: local.local_attention(q, k, v, **options["local"]),
        "lsh": lambda q, k, v: lsh.lsh_attention(q, v, rng=jax.random.key(1), **options["lsh"]),
    }
    for name, fn in ours.items():
        grads = jax.jit(lambda q, k, v, ct, fn=fn: jax.vjp(fn, q, k, v)[1](ct))
        attnx_ms = cpu_ms(lambda: jax.block_until_ready(grads(q, k, v, cotangent)), FLAGS.calls)
        _, peer_fwd_bwd = peers.torch_peer(peers.PEER_OF[name], length, batch=1, heads=heads,
                                           head_dim=head_dim, dtype="float32",
                                           options=options[name])
        peer_ms = cpu_ms(peer_fwd_bwd, FLAGS.calls)
        print(f"{name}: attnx {attnx_ms:.1f} ms, {peers.PEER_TITLES[peers.PEER_OF[name]]} "
              f"{peer_ms:.1f} ms of CPU per forward + backward ({attnx_ms / peer_ms:.2f}x)")


if __name__ == "__main__":
    app.run(main)
