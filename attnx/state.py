"""The train state: how it is built, its abstract shape and its shardings, in one place.

A train state is a dict (Orbax saves and restores it as it is):

    {'step': int32 [], 'params': nnx.State of nnx.Param, 'opt_state': optax state,
     'model_state': nnx.State of every other nnx.Variable (e.g. BatchNorm's nnx.BatchStat),
     'nonfinite': {'count': int32 [], 'last_step': int32 []}}

`nonfinite` counts the steps whose loss or gradient norm was not finite (their update was not
applied) and names the last of them (-1: none); the train step keeps it, the trainer reads it.

The model's static structure is a separate `graphdef`; every jitted function rebuilds the model
with `merge(graphdef, state)`. `params` receive gradients; `model_state` is what the model updates
itself in a training forward (BatchNorm running averages, computed over the global batch when the
batch is sharded) and only reads in evaluation. Evaluation and sampling need `eval_state(state)`:
params and model state, which is also what the best checkpoint holds.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attnx import models, optim, tasks
from attnx.data import DataInfo

State = dict[str, Any]

# Everything that is not a parameter: BatchNorm statistics and any other nnx.Variable collection.
MODEL_STATE = nnx.Not(nnx.Param)


def model_task(model_config: ml_collections.ConfigDict) -> tasks.Task:
    """The task of the model `config.model` names."""
    return tasks.get(models.get_entry(model_config.name).task)


def check_data(config: ml_collections.ConfigDict, info: DataInfo) -> tasks.Task:
    """The run's task, after checking that the dataset serves what it reads.

    Raises:
      ValueError: the dataset's kind of batches is not the task's, or a feature is missing.
    """
    task = model_task(config.model)
    if task.data_kind != info.kind:
        raise ValueError(
            f"config.model.name={config.model.name!r} (task {task.name!r}) reads "
            f"{task.data_kind!r} data, but config.data (name={config.data.name!r}) serves "
            f"{info.kind!r} batches")
    task.check_batch(info.features, f"dataset {config.data.name!r}")
    return task


def build_model(config: ml_collections.ConfigDict, info: DataInfo) -> nnx.Module:
    """`config.model` for this data: its vocabulary (+ the task's extra ids), classes, image or
    clip shape."""
    task = model_task(config.model)
    vocab = None if info.vocab_size is None else info.vocab_size + task.extra_vocab
    return models.build(config.model, vocab_size=vocab, num_classes=info.num_classes,
                        image_shape=info.image_shape, clip_shape=info.clip_shape,
                        dtype=config.dtype, seed=config.seed)


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, model_state) of a model."""
    return nnx.split(model, nnx.Param, MODEL_STATE)


def merge(graphdef: nnx.GraphDef, state: State) -> nnx.Module:
    """The model of a train state (or of an `eval_state`), with variables of its own: a forward
    that updates BatchNorm statistics changes the model, never `state`."""
    return nnx.merge(graphdef, state["params"], state["model_state"], copy=True)


def eval_state(state: State) -> State:
    """What evaluation, the best checkpoint and sampling read: params (their EMA when the
    optimizer keeps one: `optimizer.ema_decay`) and model state."""
    ema = optim.ema_params(state["opt_state"])
    return {"params": state["params"] if ema is None else ema,
            "model_state": state["model_state"]}


def _fresh(params: nnx.State, model_state: nnx.State, tx: optax.GradientTransformation) -> State:
    """The train state at step 0 around a model's params and model state."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "model_state": model_state,
            "nonfinite": {"count": jnp.zeros((), jnp.int32),
                          "last_step": jnp.full((), -1, jnp.int32)}}


def init_fn(config: ml_collections.ConfigDict, info: DataInfo,
            tx: optax.GradientTransformation) -> Callable[[], State]:
    """A function that builds a fresh train state (jit it with the state's out_shardings)."""

    def init() -> State:
        _, params, model_state = split(build_model(config, info))
        return _fresh(params, model_state, tx)

    return init


def abstract_state(config: ml_collections.ConfigDict, info: DataInfo,
                   tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, State]:
    """(graphdef, shapes of the train state), nothing allocated; the model is traced once."""
    graphdef, params, model_state = split(
        nnx.eval_shape(functools.partial(build_model, config, info)))
    return graphdef, jax.eval_shape(functools.partial(_fresh, tx=tx), params, model_state)


def shardings(state_shape: Any, mesh: Mesh) -> Any:
    """The state's shardings: replicated over the mesh (data parallelism)."""
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda _: replicated, state_shape)


def create(config: ml_collections.ConfigDict, info: DataInfo, tx: optax.GradientTransformation,
           mesh: Mesh) -> tuple[nnx.GraphDef, State, Any]:
    """(graphdef, a fresh train state created directly with its shardings, the shardings)."""
    graphdef, state_shape = abstract_state(config, info, tx)
    sharding = shardings(state_shape, mesh)
    return graphdef, jax.jit(init_fn(config, info, tx), out_shardings=sharding)(), sharding


def init(config: ml_collections.ConfigDict, info: DataInfo, tx: optax.GradientTransformation
         ) -> tuple[nnx.GraphDef, State]:
    """(graphdef, a fresh train state on the default device): for tests and benchmarks."""
    graphdef, params, model_state = split(build_model(config, info))
    return graphdef, _fresh(params, model_state, tx)


def num_params(state: State) -> int:
    """Number of trained parameters of a (possibly abstract) state."""
    return sum(x.size for x in jax.tree.leaves(state["params"]))
