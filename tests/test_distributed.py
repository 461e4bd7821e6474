"""attnx.distributed: which `jax.distributed.initialize` call a process would make (nothing is
initialised: the environment is faked and the call recorded)."""

import jax
import pytest

from attnx import distributed

SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "4",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize("environ,expected", [
    ({}, None),  # not under SLURM
    ({**SLURM_STEP, "SLURM_NTASKS": "1"}, None),  # a one-task step
    ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, None),  # batch shell
    (SLURM_STEP, {}),  # four tasks: JAX reads SLURM's variables itself
])
def test_slurm_multi_task_steps_auto_detect(environ, expected):
    assert distributed.initialize_kwargs(None, None, None, environ) == expected


def test_explicit_coordinator_wins_and_partial_flags_are_errors():
    assert distributed.initialize_kwargs("h:1234", 2, 0, SLURM_STEP) == {
        "coordinator_address": "h:1234", "num_processes": 2, "process_id": 0}
    with pytest.raises(ValueError, match="--num_processes and --process_id need "
                                         "--coordinator_address"):
        distributed.initialize_kwargs(None, 2, None, {})
    with pytest.raises(ValueError, match="SLURM_NTASKS must be an integer, got 'x'"):
        distributed.slurm_tasks({**SLURM_STEP, "SLURM_NTASKS": "x"})


def test_initialize_calls_jax_with_no_arguments_in_a_slurm_step(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(a))
    for var in SLURM_STEP:
        monkeypatch.delenv(var, raising=False)
    assert not distributed.initialize() and calls == []
    for var, value in SLURM_STEP.items():
        monkeypatch.setenv(var, value)
    assert distributed.initialize()
    assert calls == [("jax_cpu_collectives_implementation", "gloo"), {}]
    calls.clear()
    assert distributed.initialize(heartbeat_timeout=30)
    assert calls[-1] == {"heartbeat_timeout_seconds": 30, "shutdown_timeout_seconds": 30}
