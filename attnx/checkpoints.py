"""Orbax checkpoints of a run: the latest N states (to resume) and the best model (to evaluate).

Layout under the workdir: `checkpoints/<step>/{state,meta}` (the whole train state, see
`attnx.state`) and `best/<step>/{model,meta}` (what evaluation reads: params and model state). Orbax
writes each checkpoint into a temporary directory and renames it when complete, so a checkpoint is
either whole or absent: an interrupted save is never picked up.

Orbax does not notice flipped bytes in an array file (it restores them as they are), so each
`meta` also holds a fingerprint of the saved state, and a restore that does not reproduce it is
treated like one that fails to read: the checkpoint is reported by path, moved to
`corrupt_checkpoints/`, and the previous complete one is restored instead.

Test-only fault injection: `ATTNX_FAULT_INJECT=kill_in_save` makes the first save of the process
SIGKILL it half-way through the write (after array data is on disk, before Orbax's rename);
`fail_in_save` makes that save fail like a full disk. `...@<step>` picks the save of that step.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import glob
import os
import shutil
import signal
import sys
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from attnx import optim

FAULT_ENV = "ATTNX_FAULT_INJECT"
FAULTS = ("kill_in_save", "fail_in_save")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, or no checkpoint that can be read."""


class CheckpointMismatch(ValueError):
    """A checkpoint whose parameter tree or shapes are not the run's."""


def _abstract(shape_tree: Any, sharding_tree: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shape_tree, sharding_tree)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat(tree: Any) -> dict[str, Any]:
    """`{'params/decoder/.../kernel': leaf}`; nnx's `.value` wrappers are left out of the path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {"/".join(n for n in map(_key_name, path) if n != "value"): leaf
            for path, leaf in leaves if leaf is not None}


def first_mismatch(expected: Any, stored: Any) -> str | None:
    """The first parameter path whose presence, shape or dtype differs between the run's state
    (`expected`, shapes) and a checkpoint's (`stored`, Orbax metadata), as a sentence; or None."""
    want, have = _flat(expected), _flat(stored)
    for path in sorted(set(want) | set(have)):
        if path not in have:
            return f"{path} is {tuple(want[path].shape)} in the model but absent from the checkpoint"
        if path not in want:
            return f"{path} is {tuple(have[path].shape)} in the checkpoint but absent from the model"
        a, b = want[path], have[path]
        if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
            return (f"{path} is {tuple(a.shape)} {np.dtype(a.dtype)} in the model but "
                    f"{tuple(b.shape)} {np.dtype(b.dtype)} in the checkpoint")
    return None


@jax.jit
def _fingerprint_leaves(leaves: list[jax.Array]) -> jax.Array:
    """One uint32 per leaf: its bits summed with position weights (wrapping)."""
    out = []
    for x in leaves:
        bits = x.reshape(-1)
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[bits.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(bits, width).astype(jnp.uint32)
        weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
        out.append((bits * weights).sum(dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def fingerprint(tree: Any) -> list[int]:
    """A bitwise fingerprint of every array of `tree` (computed on device, a few ints back)."""
    return [int(v) for v in jax.device_get(_fingerprint_leaves(jax.tree.leaves(tree)))]


def _is_read_error_echo(unraisable: Any) -> bool:
    text = str(unraisable.exc_value)
    return "Event loop is closed" in text or "error while reading array" in text


@contextlib.contextmanager
def _quiet_failed_read() -> Iterator[None]:
    """A failed Orbax read leaves other reads in flight; when they finish they print hundreds
    of lines ('Event loop is closed'). Swallow those echoes of the error that is reported."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _is_read_error_echo(u) else previous(u)
    try:
        yield
    except Exception:
        time.sleep(0.2)  # let the reads in flight finish while the echoes are swallowed
        gc.collect()
        raise
    finally:
        sys.unraisablehook = previous


def _fault(step: int) -> str | None:
    """The fault `ATTNX_FAULT_INJECT` asks of the save of `step` (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    fault, _, at = spec.partition("@")
    if fault not in FAULTS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: the fault must be one of {FAULTS}")
    return fault if not at or int(at) == step else None


def _kill_when_written(directory: str, step: int) -> None:
    """SIGKILL this process once the temporary directory of `step` holds array data."""
    deadline = time.monotonic() + 5.0
    pattern = os.path.join(directory, f"{step}.orbax-checkpoint-tmp*", "state", "**", "d", "*")
    while not glob.glob(pattern, recursive=True) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)


def has_checkpoint(workdir: str) -> bool:
    """Whether `workdir` holds a complete checkpoint to resume (a step directory)."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class Manager:
    """The run's two checkpoint series."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.latest = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        self.best = ocp.CheckpointManager(
            os.path.join(self.workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
            item_handlers={"model": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        self._faulted = False
        self._in_flight: int | None = None

    # The two series never save at once: Orbax names its multi-process barriers by step only
    # (`_async_write_complete.<step>`), so a latest and a best save of the same step running
    # together collide on one barrier and time out. Each save first waits for the other series.

    def _wait(self, manager: ocp.CheckpointManager) -> None:
        """Wait for `manager`'s save in flight; a failed write raises CheckpointError."""
        try:
            manager.wait_until_finished()
        except Exception as e:
            step, self._in_flight = self._in_flight, None
            raise self._write_error(step, e) from e

    def _write_error(self, step: int | None, error: Exception) -> CheckpointError:
        kept = self.latest.latest_step()
        return CheckpointError(
            f"writing the checkpoint of step {step} under {self.directory} failed: {error}; "
            + (f"the checkpoint of step {kept} is intact" if kept is not None
               else "there is no earlier checkpoint"))

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save the whole train state (params, optimizer state, step) and JSON metadata, with
        the state's fingerprint; a write that fails raises CheckpointError."""
        self._wait(self.best)
        self._wait(self.latest)
        fault = None if self._faulted else _fault(step)
        self._faulted |= fault is not None
        meta = dict(meta, fingerprint=fingerprint(state))
        try:
            if fault == "fail_in_save":
                raise OSError(errno.ENOSPC, f"No space left on device ({FAULT_ENV}={fault})")
            self.latest.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        except Exception as e:
            raise self._write_error(step, e) from e
        self._in_flight = step
        if fault == "kill_in_save":
            _kill_when_written(self.directory, step)

    def save_best(self, step: int, eval_state: Any, meta: dict[str, Any]) -> None:
        """Save what a new best evaluation read (`attnx.state.eval_state`: params or their EMA,
        and the model state)."""
        self._wait(self.latest)
        model = {"params": eval_state["params"], "model_state": eval_state["model_state"]}
        self.best.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)))

    def check_compatible(self, step: int, state_shape: Any) -> None:
        """CheckpointMismatch naming the first parameter whose path or shape differs between
        the checkpoint of `step` and the run's state, before any array is read."""
        stored = self.latest.item_metadata(step)["state"]
        mismatch = first_mismatch(state_shape, getattr(stored, "tree", stored))
        if mismatch:
            raise CheckpointMismatch(
                f"the checkpoint {os.path.join(self.directory, str(step))} does not fit this "
                f"run's model: {mismatch}. Nothing was restored; train in another --workdir "
                "or restore the config the checkpoint was written with")

    def _read(self, step: int, state_shape: Any, state_sharding: Any):
        with _quiet_failed_read():
            restored = self.latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(state_shape, state_sharding)),
                meta=ocp.args.JsonRestore()))
        state, meta = restored["state"], dict(restored["meta"] or {})
        if "fingerprint" in meta and fingerprint(state) != meta["fingerprint"]:
            raise ValueError("its arrays do not match the fingerprint saved with them")
        return state, meta

    def _set_aside(self, step: int) -> str:
        """Move the unreadable checkpoint of `step` to `corrupt_checkpoints/` (process 0)."""
        target = os.path.join(self.workdir, "corrupt_checkpoints", str(step))
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(os.path.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"attnx_set_aside_{step}")
        self.latest.reload()
        return target

    def restore_latest(self, state_shape: Any, state_sharding: Any, log=print):
        """(state, meta) of the newest complete checkpoint that reads back whole, or None if
        there is no checkpoint. An unreadable one is reported by path (`log`), set aside, and
        the previous one is tried.

        Raises:
          CheckpointMismatch: the checkpoint's parameter tree or shapes differ from
            `state_shape` (nothing is restored).
          CheckpointError: there are checkpoints, but none reads back whole.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                self.check_compatible(step, state_shape)
                return self._read(step, state_shape, state_sharding)
            except CheckpointMismatch:
                raise
            except Exception as e:
                path = os.path.join(self.directory, str(step))
                reason = str(e).split("\n")[0][:200]
                failures.append(f"{path}: {reason}")
                log(f"checkpoint {path} is corrupted or truncated ({reason}); moved to "
                    f"{self._set_aside(step)}; trying the previous one")
        if failures:
            raise CheckpointError("no checkpoint of this run reads back whole:\n  "
                                  + "\n  ".join(failures)
                                  + "\nstart again in another --workdir")
        return None

    def restore_eval_state(self, state_shape: Any, state_sharding: Any):
        """({'params', 'model_state'}, 'best' | 'latest', step) from the best checkpoint, else
        the latest; or None if there is neither."""
        step = self.best.latest_step()
        if step is not None:
            keys = ("params", "model_state")
            abstract = _abstract({k: state_shape[k] for k in keys},
                                 {k: state_sharding[k] for k in keys})
            restored = self.best.restore(step, args=ocp.args.Composite(
                model=ocp.args.StandardRestore(abstract)))
            return dict(restored["model"]), "best", step
        found = self.restore_latest(state_shape, state_sharding)
        if found is None:
            return None
        state = found[0]
        ema = optim.ema_params(state["opt_state"])
        return ({"params": state["params"] if ema is None else ema,
                 "model_state": state["model_state"]}, "latest", int(state["step"]))

    def best_step(self) -> int | None:
        """The step of the best checkpoint (once its writes are complete), or None."""
        self._wait(self.best)
        return self.best.latest_step()

    def wait(self) -> None:
        """Wait for in-flight saves to be complete; a failed write raises CheckpointError."""
        for manager in (self.latest, self.best):
            self._wait(manager)

    def close(self) -> None:
        """Wait for in-flight saves to be complete, then release the managers."""
        try:
            self.wait()
        finally:
            for manager in (self.latest, self.best):
                manager.close()
