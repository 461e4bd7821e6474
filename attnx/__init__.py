"""attnx: a JAX/Flax research framework for attention mechanisms."""

from attnx import compat

compat.check_jax()

__version__ = "0.1.0"
