"""Optimizers and learning-rate schedules from `config.optimizer` (optax)."""

from __future__ import annotations

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
    return core, schedule
