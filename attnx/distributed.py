"""Multi-process runs: when and how the trainer calls `jax.distributed.initialize`.

Two ways in: an explicit `--coordinator_address` (with `--num_processes`, `--process_id`), or a
SLURM job step with several tasks (`srun` with `--ntasks` > 1), where JAX reads the coordinator,
process count and index from SLURM's variables itself (`jax.distributed.initialize()` with no
arguments). A single process (no flag, no multi-task step) initialises nothing.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

# What JAX's SLURM cluster detection reads; SLURM_STEP_NODELIST is set only inside an `srun`
# step, so a batch script's own shell (one process, whatever --ntasks) is not taken for a task.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


def slurm_tasks(environ: Mapping[str, str]) -> int:
    """The number of tasks of the SLURM job step this process is one of (0 outside a step).

    Raises:
      ValueError: SLURM_NTASKS is not an integer.
    """
    if not all(var in environ for var in _SLURM_VARS):
        return 0
    try:
        return int(environ["SLURM_NTASKS"])
    except ValueError:
        raise ValueError(f"SLURM_NTASKS must be an integer, got "
                         f"{environ['SLURM_NTASKS']!r}") from None


def initialize_kwargs(coordinator_address: str | None, num_processes: int | None,
                      process_id: int | None,
                      environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The arguments of `jax.distributed.initialize` for this process: the explicit ones, `{}`
    (auto-detection) in a multi-task SLURM step, or None (a single process: do not initialise).

    Raises:
      ValueError: --num_processes or --process_id without --coordinator_address.
    """
    if coordinator_address:
        return {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    if num_processes is not None or process_id is not None:
        raise ValueError("--num_processes and --process_id need --coordinator_address "
                         "(or run under srun, which JAX detects)")
    return {} if slurm_tasks(os.environ if environ is None else environ) > 1 else None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout: int | None = None) -> bool:
    """Initialise `jax.distributed` where `initialize_kwargs` says so; returns whether it did.

    `heartbeat_timeout` (seconds): a process that dies stops sending heartbeats, and the others
    then end with an error naming it after this long instead of waiting for it forever.
    """
    import jax

    kwargs = initialize_kwargs(coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    if heartbeat_timeout is not None:
        kwargs.update(heartbeat_timeout_seconds=heartbeat_timeout,
                      shutdown_timeout_seconds=heartbeat_timeout)
    # Cross-process collectives of the CPU backend (no effect on accelerator backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True
