"""attnx's XLA:CPU default (attnx/cpu_defaults.py): when `import attnx` sets it; that it works."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from attnx import cpu_defaults

DEVICES = "--xla_force_host_platform_device_count=4"


def test_flag_is_added_to_other_flags():
    assert cpu_defaults.flags_with_default("") == cpu_defaults.FLAG
    assert cpu_defaults.flags_with_default(DEVICES) == f"{DEVICES} {cpu_defaults.FLAG}"


def test_a_setting_of_the_users_wins():
    assert cpu_defaults.flags_with_default(
        f"{DEVICES} --xla_cpu_experimental_ynn_fusion_type=dot") is None


@pytest.mark.parametrize("version, applies", [("0.10.2", True), ("0.10.9", True),
                                              ("0.11.2", False), ("0.12.0.1", False)])
def test_only_jax_0_10_gets_it(version, applies):
    assert cpu_defaults.applies_to(version) is applies


@pytest.fixture
def fresh_jax_0_10(monkeypatch):
    """As if JAX 0.10 had not created a backend yet, with the tests' device flag set."""
    monkeypatch.setattr(jax, "__version__", "0.10.2")
    monkeypatch.setattr(cpu_defaults, "_backends_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", DEVICES)
    monkeypatch.delenv(cpu_defaults.OPT_OUT, raising=False)


def test_apply_adds_the_flag(fresh_jax_0_10):
    assert cpu_defaults.apply()
    assert os.environ["XLA_FLAGS"] == f"{DEVICES} {cpu_defaults.FLAG}"
    assert not cpu_defaults.apply()  # once is enough
    assert os.environ["XLA_FLAGS"] == f"{DEVICES} {cpu_defaults.FLAG}"


def test_opting_out_leaves_the_flags(fresh_jax_0_10, monkeypatch):
    monkeypatch.setenv(cpu_defaults.OPT_OUT, "0")
    assert not cpu_defaults.apply()
    assert os.environ["XLA_FLAGS"] == DEVICES


def test_newer_jax_leaves_the_flags(fresh_jax_0_10, monkeypatch):
    monkeypatch.setattr(jax, "__version__", "0.12.0.1")
    assert not cpu_defaults.apply()
    assert os.environ["XLA_FLAGS"] == DEVICES


def test_a_running_backend_leaves_the_flags(monkeypatch):
    jax.devices()  # the backend exists from here on: a flag set now could not take effect
    monkeypatch.setenv("XLA_FLAGS", DEVICES)
    monkeypatch.delenv(cpu_defaults.OPT_OUT, raising=False)
    assert not cpu_defaults.apply()
    assert os.environ["XLA_FLAGS"] == DEVICES


def test_import_attnx_sets_it_in_a_new_process():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_defaults.OPT_OUT)}
    code = "import os, attnx; print(os.environ.get('XLA_FLAGS'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    expected = cpu_defaults.FLAG if cpu_defaults.applies_to(jax.__version__) else "None"
    assert out == expected


def test_dots_of_this_process_follow_the_setting():
    """With the default in effect, a batched dot is XLA's own instruction, not a YNNPACK fusion
    (under XLA's default, JAX 0.10 compiles the same dot to a `ynn_fusion`)."""
    lhs, rhs = jnp.ones((4, 384, 64)), jnp.ones((4, 128, 64))
    hlo = jax.jit(lambda a, b: jnp.einsum("gmk,gnk->gmn", a, b)).lower(lhs, rhs).compile().as_text()
    root = next(line for line in hlo.splitlines() if line.strip().startswith("ROOT"))
    if cpu_defaults.FLAG in os.environ.get("XLA_FLAGS", ""):
        assert " dot(" in root and "ynn" not in root, root
    else:
        assert not cpu_defaults.applies_to(jax.__version__)
