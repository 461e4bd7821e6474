"""Two processes on loopback (jax.distributed, gloo) train exactly like one process.

One process with 4 CPU devices and two processes with 2 devices each run the same smoke config;
their logged metrics and final parameters must agree.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from attnx import checkpoints, data, optim
from attnx import state as state_lib
from helpers import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SGD, not Adam: Adam's normalised update turns float-rounding differences of near-zero gradients
# (reductions in another order) into lr-sized steps, which would hide real differences.
OVERRIDES = {"num_train_steps": 6, "eval_every": 6, "checkpoint_every": 6, "num_samples": 0,
             "log_every": 6, "optimizer.name": "sgd", "optimizer.learning_rate": 0.5}
ARGS = ["--config=configs/transformer_lm.py:smoke"] + [
    f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _env(devices, data_dir):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env, [f"--config.data.data_dir={data_dir}"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric_lines(log):
    return [line for line in log.splitlines() if line.startswith(("step 6/6", "eval at step 6"))]


def _params(workdir, data_dir):
    config = load_config("transformer_lm", "smoke")
    config.data.data_dir = data_dir
    config.optimizer.name = OVERRIDES["optimizer.name"]
    tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
    _, state_shape = state_lib.abstract_state(config, data.build(config.data, seed=0).info, tx)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    manager = checkpoints.Manager(workdir)
    state, _ = manager.restore_latest(state_shape, jax.tree.map(lambda _: device, state_shape))
    manager.close()
    assert int(state["step"]) == 6
    return state["params"]


def test_two_processes_equal_one(tmp_path, data_dir):
    env, extra = _env(4, data_dir)
    single = subprocess.run([sys.executable, "-m", "attnx.train", *ARGS, *extra,
                             f"--workdir={tmp_path / 'single'}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    env, extra = _env(2, data_dir)
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "attnx.train", *ARGS, *extra, f"--workdir={tmp_path / 'multi'}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert _metric_lines(outs[0][0]) and not _metric_lines(outs[1][0])  # process 0 logs alone
    strip = lambda lines: [line.split(" | ")[0:2] if "|" in line else line for line in lines]
    assert strip(_metric_lines(outs[0][0])) == strip(_metric_lines(single.stdout))
    for a, b in zip(jax.tree.leaves(_params(str(tmp_path / "single"), data_dir)),
                    jax.tree.leaves(_params(str(tmp_path / "multi"), data_dir))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
