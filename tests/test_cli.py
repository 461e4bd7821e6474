"""Command-line errors: unknown config fields, missing config files, attnx's own ValueErrors."""

import os
import subprocess
import sys

import pytest

from attnx import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_field_suggests_the_nearest_and_lists_the_section():
    config = cli.load_config(os.path.join(ROOT, "configs/reformer_lm.py"))
    with pytest.raises(cli.UsageError) as info:
        cli.check_override(config, "model.attn_layer")
    message = str(info.value)
    assert "config.model has no field 'attn_layer'; did you mean 'attn_layers'" in message
    with pytest.raises(cli.UsageError, match="attn_layers, axial_dims"):  # the section's fields
        cli.check_override(config, "model.attention")
    with pytest.raises(cli.UsageError, match="config.optimizer has no field 'lr'"):
        cli.check_override(config, "optimizer.lr")
    with pytest.raises(cli.UsageError, match=r"config.batch_size is a value \(int\)"):
        cli.check_override(config, "batch_size.x")
    cli.check_override(config, "model.lsh_options.n_hashes")  # exists: no error


def test_config_file_and_argument_errors_are_one_line_each():
    with pytest.raises(cli.UsageError, match="no config file 'configs/nope.py'"):
        cli.check_config_flags(["--config=configs/nope.py"])
    with pytest.raises(cli.UsageError, match="unknown config argument 'bogus'.*known: enwik8, "
                                             "smoke"):
        cli.check_config_flags([f"--config={ROOT}/configs/reformer_lm.py:bogus"])
    cli.check_config_flags(["--workdir=x"])  # no --config: nothing to check


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnx.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_the_trainer_prints_errors_in_a_few_lines(tmp_path):
    result = _train("--config=configs/reformer_lm.py", "--config.model.attention=bogus")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0].startswith(
        "error: --config.model.attention: config.model has no field 'attention'")
    assert len(result.stderr.splitlines()) == 2 and "attn_layers" in result.stderr
    # attnx's own ValueError (raised when the run is set up): one line and a hint, no traceback.
    result = _train("--config=configs/transformer_lm.py:smoke", f"--workdir={tmp_path / 'run'}",
                    "--config.optimizer.schedule=bogus")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: optimizer.schedule must be one of ['constant', 'cosine', 'linear', 'rsqrt'], "
        "got 'bogus'", "(run again with --traceback for the traceback)"]
