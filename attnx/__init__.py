"""attnx: a JAX/Flax research framework for attention mechanisms."""

from attnx import compat, cpu_defaults

compat.check_jax()
cpu_defaults.apply()

__version__ = "0.1.0"
