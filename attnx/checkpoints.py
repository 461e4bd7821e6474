"""Orbax checkpoints of a run: the latest N states (to resume) and the best model (to evaluate).

Layout under the workdir: `checkpoints/<step>/{state,meta}` (the whole train state, see
`attnx.state`) and `best/<step>/{model,meta}` (what evaluation reads: params and model state). Orbax
writes each checkpoint into a temporary directory and renames it when complete, so a checkpoint is
either whole or absent: an interrupted save is never picked up.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _abstract(shape_tree: Any, sharding_tree: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shape_tree, sharding_tree)


class Manager:
    """The run's two checkpoint series."""

    def __init__(self, workdir: str, *, keep: int = 2):
        workdir = os.path.abspath(workdir)
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

    # The two series never save at once: Orbax names its multi-process barriers by step only
    # (`_async_write_complete.<step>`), so a latest and a best save of the same step running
    # together collide on one barrier and time out. Each save first waits for the other series.

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save the whole train state (params, optimizer state, step) and JSON metadata."""
        self.best.wait_until_finished()
        self.latest.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def save_best(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save the params and model state of a new best evaluation."""
        self.latest.wait_until_finished()
        model = {"params": state["params"], "model_state": state["model_state"]}
        self.best.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)))

    def restore_latest(self, state_shape: Any, state_sharding: Any):
        """(state, meta) of the newest complete checkpoint, or None if there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_shape, state_sharding)),
            meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"] or {})

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
        return ({"params": state["params"], "model_state": state["model_state"]}, "latest",
                int(state["step"]))

    def close(self) -> None:
        """Wait for in-flight saves to be complete, then release the managers."""
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()
