"""The JAX releases attnx runs on, checked once when `attnx` is imported.

attnx is tested on JAX 0.10.x (Python 3.11, where it is the newest release), 0.11.x and 0.12.x
(Python 3.12 and 3.13); `.ci/run` runs the suite on each and `requirements/` locks each tested
environment. The JAX, Flax, Orbax and Pallas calls attnx makes are spelled the same on all three
but one: ahead-of-time lowering of a Pallas Triton kernel for 'cuda' on a host without a GPU
(`lower_for`). A call whose spelling comes to differ between supported releases gets one function
here, and callers use that instead of testing versions.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable

import jax

# Keep in step with the `jax` requirement in pyproject.toml (tests/test_compat.py checks it).
MIN_JAX = (0, 10, 2)
BELOW_JAX = (0, 13)
SUPPORTED_JAX = ">=0.10.2,<0.13"


def parse_version(version: str) -> tuple[int, ...]:
    """Leading numeric release of a version string: '0.12.0.1' -> (0, 12, 0, 1), '0.13.0.dev1' ->
    (0, 13, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def unsupported_jax_message(version: str) -> str | None:
    """None if JAX `version` is supported, else the one line that says what to install."""
    if MIN_JAX <= parse_version(version) < BELOW_JAX:
        return None
    return (f"attnx supports JAX {SUPPORTED_JAX}, but JAX {version} is installed "
            f"(`pip install -e .` in the attnx checkout installs a supported one)")


def check_jax() -> None:
    """ImportError naming the supported range if the installed JAX is outside it."""
    message = unsupported_jax_message(jax.__version__)
    if message is not None:
        raise ImportError(message)


# The GPU a 'cuda' lowering targets on a host without one: compute capability 9.0, the fallback
# JAX 0.10's Triton lowering used by itself.
_ABSTRACT_GPU_KIND = "NVIDIA H100"


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def lower_for(jitted: Callable[..., Any], platform: str, *args: Any,
              **kwargs: Any) -> jax.stages.Lowered:
    """`jitted.trace(*args, **kwargs).lower(lowering_platforms=(platform,))` on any host.

    From JAX 0.11 on, Pallas' Triton lowering reads the compute capability of the GPU it targets
    and fails where there is none; on such a host a 'cuda' lowering is traced and lowered under
    an abstract mesh whose device is an H100, which is what JAX 0.10 assumed without being told.
    """
    target = contextlib.nullcontext()
    if platform == "cuda" and not _has_gpu():
        gpu = jax.sharding.AbstractDevice(device_kind=_ABSTRACT_GPU_KIND, num_cores=None,
                                          platform="gpu")
        target = jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (),
                                                                          abstract_device=gpu))
    with target:
        return jitted.trace(*args, **kwargs).lower(lowering_platforms=(platform,))
