"""Test setup: four simulated CPU devices (set before JAX is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The one TFDS data_dir of the session: every test that builds an embedded dataset with
    `data_dir=data_dir` (or `config.data.data_dir = data_dir`) shares it, so each dataset and
    builder config is prepared once per session, by the first test that asks for it (the
    pipeline prepares on first use, under a lock), and read by all the others."""
    return str(tmp_path_factory.mktemp("tfds"))
