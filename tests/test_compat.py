"""The supported JAX range: what `import attnx` says outside it, and that pyproject agrees."""

import os
import re
import subprocess
import sys
import tomllib

import pytest

from attnx import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("version", ["0.10.2", "0.11.2", "0.12.0.1", "0.12.9"])
def test_supported_versions_pass(version):
    assert compat.unsupported_jax_message(version) is None


@pytest.mark.parametrize("version", ["0.9.2", "0.10.1", "0.13.0", "0.13.0.dev20261201", "1.0.0"])
def test_unsupported_versions_name_the_range(version):
    message = compat.unsupported_jax_message(version)
    assert f"JAX {version} is installed" in message and compat.SUPPORTED_JAX in message
    assert "\n" not in message


def test_range_constants_agree_with_pyproject():
    """The jax requirements of pyproject.toml span exactly MIN_JAX .. BELOW_JAX."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    ranges = [re.search(r">=([\d.]+),<([\d.]+)", d).groups()
              for d in dependencies if re.match(r"jax(lib)?[\[>=]", d)]
    assert ranges, "no jax requirement in pyproject.toml"
    assert min(compat.parse_version(low) for low, _ in ranges) == compat.MIN_JAX
    assert max(compat.parse_version(high) for _, high in ranges) == compat.BELOW_JAX
    low, high = (".".join(map(str, v)) for v in (compat.MIN_JAX, compat.BELOW_JAX))
    assert compat.SUPPORTED_JAX == f">={low},<{high}"


def test_import_with_an_unsupported_jax_fails_with_one_line():
    # An old JAX: its version, and an API attnx uses missing (nothing may touch it before the check).
    code = "import jax; jax.__version__ = '0.9.2'; del jax.sharding.AbstractDevice; import attnx"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: attnx supports JAX >=0.10.2,<0.13, but JAX 0.9.2")
