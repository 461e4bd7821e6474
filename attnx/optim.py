"""Optimizers and learning-rate schedules from `config.optimizer` (optax), and the weights' EMA.

`optimizer.ema_decay` = d keeps an exponential moving average of the parameters in the optimizer
state (`params_ema`: after every applied step, ema = d * ema + (1 - d) * params, starting from
the initial parameters); evaluation, the best checkpoint and sampling then read the average
(`ema_params`, through `attnx.state.eval_state`), as the official MaxViT code evaluates. The
model state (BatchNorm statistics) is not averaged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def create_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning-rate schedule: 'constant', 'cosine', 'linear' (decay to 0) or 'rsqrt' (paper)."""
    lr, warmup = opt.learning_rate, opt.warmup_steps
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {list(SCHEDULES)}, "
                         f"got {opt.schedule!r}")
    if opt.schedule == "rsqrt":  # "Attention Is All You Need": lr * min(s / w^1.5, 1 / sqrt(s))
        def rsqrt(step):
            s = jnp.maximum(step.astype(jnp.float32), 1.0)
            return lr * jnp.minimum(s * warmup**-1.5, s**-0.5) * warmup**0.5
        return rsqrt
    decay_steps = max(num_steps - warmup, 1)
    decay = {
        "constant": optax.constant_schedule(lr),
        "cosine": optax.cosine_decay_schedule(lr, decay_steps),
        "linear": optax.linear_schedule(lr, 0.0, decay_steps),
    }[opt.schedule]
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


class ParamsEma(NamedTuple):
    """The optimizer state of `params_ema`: the average, shaped as the parameters."""

    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """Updates pass through unchanged; the state tracks the EMA of the updated parameters.

    The last transformation of a chain, so its `updates` are the step's final ones:
    ema <- decay * ema + (1 - decay) * (params + updates).
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"optimizer.ema_decay must be in (0, 1) or None, got {decay}")

    def init(params):
        return ParamsEma(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("params_ema needs the parameters: tx.update(grads, state, params)")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                           state.ema, new)
        return updates, ParamsEma(ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
    """The parameters' EMA held in `opt_state` (of `create_optimizer` with `ema_decay`), or None;
    works on any tree of the optimizer state's structure (e.g. its shardings)."""
    if isinstance(opt_state, ParamsEma):
        return opt_state.ema
    if isinstance(opt_state, (tuple, list)):
        for part in opt_state:
            found = ema_params(part)
            if found is not None:
                return found
    return None


def create_optimizer(opt: ml_collections.ConfigDict, num_steps: int
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, schedule) from `config.optimizer`."""
    schedule = create_schedule(opt, num_steps)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay)
    elif opt.name == "adam":
        core = optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
    elif opt.name == "sgd":
        core = optax.sgd(schedule, momentum=opt.b1)
    else:
        raise ValueError(f"optimizer.name must be one of {list(OPTIMIZERS)}, got {opt.name!r}")
    if opt.clip_norm is not None:
        core = optax.chain(optax.clip_by_global_norm(opt.clip_norm), core)
    if opt.get("ema_decay") is not None:
        core = optax.chain(core, params_ema(opt.ema_decay))
    return core, schedule
