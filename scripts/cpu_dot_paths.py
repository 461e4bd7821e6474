"""Batched-dot throughput on XLA:CPU with and without YNNPACK's individual-dot fusion.

XLA reads its flags once per process, so each setting runs in its own child process, the two
alternating for `--rounds` rounds; the table gives the median GFLOP/s of each shape over the
rounds (each round: the median of 7 timings of 16 chained products). The shapes are the products
attention runs at 4,096 tokens, 4 heads of 64: `longformer`'s band (blocks of 128 queries against
384 keys) and `local`'s chunks (256 chunks of 64 queries against 128 keys), in both orders of
the operands that forward and backward use. `--torch` adds `torch.bmm` on the same shapes (as
many threads as cores) for comparison.

    python scripts/cpu_dot_paths.py [--rounds=3] [--torch]

Run it on an otherwise idle machine; attnx/cpu_defaults.py says on which JAX releases attnx
turns the fusion off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Callable

import numpy as np

from attnx import cpu_defaults
from attnx.bench import measure

# name: (einsum, lhs shape, rhs shape); every product has 2 * prod(batch, m, n, k) FLOPs.
SHAPES = {
    "longformer logits [4,384,64]x[4,128,64]": ("gkh,gqh->gkq", (4, 384, 64), (4, 128, 64)),
    "longformer d_k [4,384,128]x[4,128,64]": ("gkq,gqh->gkh", (4, 384, 128), (4, 128, 64)),
    "local logits [256,128,64]x[256,64,64]": ("ckh,cqh->ckq", (256, 128, 64), (256, 64, 64)),
    "local out [256,128,64]x[256,128,64]": ("ckq,ckh->cqh", (256, 128, 64), (256, 128, 64)),
}
SETTINGS = {
    "YNNPACK individual dot (XLA's default)": {cpu_defaults.OPT_OUT: "0"},
    "XLA's own dot (-individual_dot)": {"XLA_FLAGS": cpu_defaults.FLAG},
}


def flops(eq: str, lhs: tuple[int, ...], rhs: tuple[int, ...]) -> int:
    """2 x the product of every index's size in the einsum `eq` of operands `lhs`, `rhs`."""
    lhs_indices, rhs_indices = eq.split("->")[0].split(",")
    sizes = {**dict(zip(lhs_indices, lhs)), **dict(zip(rhs_indices, rhs))}
    return 2 * int(np.prod(list(sizes.values())))


def _per_product_seconds(call: Callable[[], Any]) -> float:
    """Median over 7 timings of `call` (16 products, blocking), divided by 16."""
    return float(np.median(measure.run_times(call, repeats=7))) / 16


def _measure_jax() -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    result = {}
    for name, (eq, lhs, rhs) in SHAPES.items():
        a = jax.random.normal(jax.random.key(0), lhs)
        b = jax.random.normal(jax.random.key(1), rhs)

        def chained(a, b, eq=eq):  # 16 dependent products, so dispatch does not dominate
            def body(carry, _):
                return carry + jnp.einsum(eq, a + carry, b)[0, 0, 0], None
            return jax.lax.scan(body, jnp.float32(0), None, length=16)[0]

        fn = jax.jit(chained)
        seconds = _per_product_seconds(lambda: jax.block_until_ready(fn(a, b)))
        result[name] = flops(eq, lhs, rhs) / seconds / 1e9
    return result


def _measure_torch() -> dict[str, float]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    result = {}
    for name, (eq, lhs, rhs) in SHAPES.items():
        a, b = torch.randn(*lhs), torch.randn(*rhs)
        seconds = _per_product_seconds(lambda: [torch.einsum(eq, a, b) for _ in range(16)])
        result[name] = flops(eq, lhs, rhs) / seconds / 1e9
    return result


def _child(setting: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_defaults.OPT_OUT)}
    env.update(SETTINGS[setting])
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch", action="store_true", help="also time torch.bmm (einsum)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure_jax()))
        return
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    if args.torch:
        runs["torch (einsum / bmm)"] = []
    for round_index in range(args.rounds):
        for setting in runs:
            print(f"[cpu_dot_paths] round {round_index + 1}/{args.rounds}: {setting}",
                  file=sys.stderr, flush=True)
            runs[setting].append(_measure_torch() if setting.startswith("torch") else
                                 _child(setting))
    print("| product | " + " | ".join(runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in SHAPES:
        cells = [f"{np.median([r[name] for r in rs]):.0f} GFLOP/s" for rs in runs.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
