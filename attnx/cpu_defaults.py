"""The XLA:CPU setting attnx makes on JAX 0.10: dots run by XLA's own kernel, not YNNPACK's.

JAX 0.10's XLA:CPU hands every dot it can to a YNNPACK "individual dot" library fusion. For the
batched products of small blocks that chunked, banded and blockwise attention are made of (4-256
blocks of 64-384 rows, head dim 64) those fusions ran at 31-51 GFLOP/s where XLA's own dot ran
at 45-116 on this project's 2-core AMD EPYC (`python scripts/cpu_dot_paths.py --torch`; torch
ran the same products at 82-107). Turning that one fusion type off (YNNPACK keeps its
element-wise and reduction fusions) made `flash`, `local`, `lsh` and `longformer` 10-21% faster
forward + backward at 4,096 and 8,192 tokens (at 2,048 within noise: 9% faster to 9% slower)
and the Reformer LM step 1-7% faster, with dense attention unchanged within noise
(experiments/efficiency/README.md). On JAX 0.11 and 0.12 YNNPACK's dots are faster and the same
flag made those mechanisms 3-31% slower, so there attnx leaves XLA's default alone.

XLA reads its flags once, when JAX creates its first backend, so `apply()` runs when `attnx` is
imported and, on JAX 0.10, adds `--xla_cpu_experimental_ynn_fusion_type=-individual_dot` to
`XLA_FLAGS` unless
- `XLA_FLAGS` already sets `xla_cpu_experimental_ynn_fusion_type` (your setting wins),
- `ATTNX_XLA_CPU_DEFAULTS=0` is set, or
- JAX has already created a backend (the flag could no longer take effect; import attnx before
  running any JAX computation to get it).
The flag only concerns the CPU backend; on GPU and TPU it changes nothing.
"""

from __future__ import annotations

import os

import jax

from attnx import compat

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{FLAG_NAME}=-individual_dot"
OPT_OUT = "ATTNX_XLA_CPU_DEFAULTS"
# The JAX releases whose XLA:CPU runs attention's batched dots faster without YNNPACK's.
APPLIES_BELOW_JAX = (0, 11)


def applies_to(jax_version: str) -> bool:
    """Whether attnx's XLA:CPU default is used with JAX `jax_version`."""
    return compat.parse_version(jax_version) < APPLIES_BELOW_JAX


def _backends_initialized() -> bool:
    from jax._src import xla_bridge  # private, but the only way to ask; present in 0.10-0.12

    return xla_bridge.backends_are_initialized()


def flags_with_default(xla_flags: str) -> str | None:
    """`xla_flags` with attnx's CPU default added, or None if they already choose that setting."""
    if FLAG_NAME in xla_flags:
        return None
    return f"{xla_flags} {FLAG}".strip()


def apply() -> bool:
    """Add attnx's XLA:CPU default to `XLA_FLAGS` where it can still take effect; True if added."""
    if (not applies_to(jax.__version__) or os.environ.get(OPT_OUT, "1") == "0"
            or _backends_initialized()):
        return False
    flags = flags_with_default(os.environ.get("XLA_FLAGS", ""))
    if flags is None:
        return False
    os.environ["XLA_FLAGS"] = flags
    return True
