r"""Train and evaluate a model from an ml_collections config.

    python -m attnx.train --config=configs/transformer_lm.py[:arg] [--workdir=DIR] \
        [--config.a.b=value ...] [--mode=train|eval] [--split=test]

`--workdir` defaults to `runs/<config name>[_<arg>]`. Re-running the same command resumes from the
newest complete checkpoint. The whole run reads top to bottom in `train_and_evaluate`: validate the
config, mesh, data, model and optimizer state (sharded by annotation), the jitted and donated train
step, resume, then the loop with logging, evaluation, samples and checkpoints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attnx import attention_maps, checkpoints, config_lib, data, models, sample
from attnx.summary import SummaryWriter

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Config checks: everything that can be wrong is reported before any data is read or compiled.


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for an impossible combination of settings."""
    models.model_settings(config.model, vocab_size=2, num_classes=2, dtype=config.dtype)
    entry = models.get_entry(config.model.name)
    max_len = config.model.get("max_len")
    extra = 1 if entry.task == "classification" else 0  # the [CLS] token
    if max_len is not None and config.data.seq_len + extra > max_len:
        raise ValueError(f"data.seq_len={config.data.seq_len} (+{extra} for [CLS]) exceeds "
                         f"model.max_len={max_len}, the positional table's length")
    n_dev = jax.device_count()
    if config.batch_size % (n_dev * config.grad_accum_steps):
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of "
                         f"devices ({n_dev}) times grad_accum_steps ({config.grad_accum_steps})")
    if config.num_train_steps < 0:
        raise ValueError(f"num_train_steps must be >= 0, got {config.num_train_steps}")
    if config.best_mode not in ("min", "max"):
        raise ValueError(f"best_mode must be 'min' or 'max', got {config.best_mode!r}")


def check_workdir(workdir: str) -> None:
    """Create `workdir` and prove it is writable, before any training starts."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} cannot be written: {e}") from None


# ----------------------------------------------------------------------------------------------
# Optimizer, loss and the step functions.


def create_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning-rate schedule: 'constant', 'cosine', 'linear' (decay to 0) or 'rsqrt' (paper)."""
    lr, warmup = opt.learning_rate, opt.warmup_steps
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
    }
    if opt.schedule not in decay:
        raise ValueError(f"optimizer.schedule must be one of {sorted(decay) + ['rsqrt']}, "
                         f"got {opt.schedule!r}")
    if warmup == 0:
        return decay[opt.schedule]
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), decay[opt.schedule]], [warmup])


def create_optimizer(opt: ml_collections.ConfigDict, num_steps: int):
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
        raise ValueError(f"optimizer.name must be 'adamw', 'adam' or 'sgd', got {opt.name!r}")
    if opt.clip_norm is not None:
        core = optax.chain(optax.clip_by_global_norm(opt.clip_norm), core)
    return core, schedule


def cross_entropy(logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.0):
    """Weighted sums over all positions: (loss_sum, correct_sum, weight_sum).

    logits `[..., V]` float32, targets `[...]` int, weights `[...]`.
    """
    vocab = logits.shape[-1]
    if label_smoothing:
        labels = optax.smooth_labels(jax.nn.one_hot(targets, vocab), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return (loss * weights).sum(), (correct * weights).sum(), weights.sum()


def make_train_step(graphdef, task: str, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum_steps: int = 1,
                    label_smoothing: float = 0.0) -> Callable:
    """`train_step(state, batch, base_rng) -> (state, metrics)`, pure; the caller jits it.

    The dropout/hashing key of step s is `fold_in(base_rng, s)`, so the key is not state and a
    resumed run replays the uninterrupted one. With `grad_accum_steps = a`, the batch is cut into a
    microbatches whose gradients are summed before one update (same result as one big batch).
    """

    def loss_sums(params, batch, rng):
        model = nnx.merge(graphdef, params)
        logits, targets, weights = models.forward(model, task, batch, rng)
        return cross_entropy(logits, targets, weights, label_smoothing)

    def train_step(state, batch, base_rng):
        step = state["step"]
        rng = jax.random.fold_in(base_rng, step)
        total_weight = jnp.maximum(batch["weights"].astype(jnp.float32).sum(), 1.0)

        def micro_grad(micro_batch, micro_rng):
            def objective(params):
                loss_sum, correct, weight = loss_sums(params, micro_batch, micro_rng)
                return loss_sum / total_weight, (loss_sum, correct, weight)
            return jax.grad(objective, has_aux=True)(state["params"])

        if grad_accum_steps == 1:
            grads, (loss_sum, correct, weight) = micro_grad(batch, rng)
        else:
            # Row r goes to microbatch r % a, so every microbatch keeps the 'data' sharding.
            micro = jax.tree.map(
                lambda x: x.reshape((-1, grad_accum_steps) + x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, inputs):
                micro_batch, index = inputs
                g, stats = micro_grad(micro_batch, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (g, stats)), None

            zero = (jax.tree.map(jnp.zeros_like, state["params"]), (0.0, 0.0, 0.0))
            (grads, (loss_sum, correct, weight)), _ = jax.lax.scan(
                body, zero, (micro, jnp.arange(grad_accum_steps)))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss_sum / jnp.maximum(weight, 1.0),
            "accuracy": correct / jnp.maximum(weight, 1.0),
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(step),
        }
        return {"step": step + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step


def make_eval_step(graphdef, task: str) -> Callable:
    """`eval_step(params, batch) -> (loss_sum, correct_sum, weight_sum)` without dropout."""

    def eval_step(params, batch):
        model = nnx.merge(graphdef, params)
        logits, targets, weights = models.forward(model, task, batch, None)
        return cross_entropy(logits, targets, weights)

    return eval_step


# ----------------------------------------------------------------------------------------------
# Pieces of the run.


def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process).

    Axis type Auto: XLA's partitioner propagates the batch sharding through the model, as in
    classic data parallelism, without sharding annotations inside the model.
    """
    devices = jax.devices() if devices is None else devices
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def _global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Array]:
    """This process's rows -> one global array per feature, sharded on 'data'."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def evaluate(config, dataset, eval_step, params, batch_sharding, split: str) -> dict[str, float]:
    """Loss, accuracy (and bits per byte for byte-level LMs) over one pass of `split`."""
    totals = np.zeros(3, np.float64)
    for local in dataset.eval_batches(
            split, global_batch_size=config.eval_batch_size, max_batches=config.eval_batches,
            process_index=jax.process_index(), process_count=jax.process_count()):
        sums = eval_step(params, _global_batch(local, batch_sharding))
        totals += np.asarray(jax.device_get(sums), np.float64)
    loss_sum, correct, weight = totals
    weight = max(weight, 1.0)
    metrics = {"loss": loss_sum / weight, "accuracy": correct / weight}
    if models.get_entry(config.model.name).task == "lm":
        metrics["bits_per_byte"] = metrics["loss"] / math.log(2)
    return metrics


def write_attention_maps(writer, step: int, graphdef, params, dataset, config) -> None:
    """Images of every layer's attention on the first evaluation example."""
    batch = next(iter(dataset.eval_batches(config.data.eval_split, global_batch_size=1,
                                           max_batches=1)))
    model = nnx.merge(graphdef, jax.device_get(params))
    maps = attention_maps.model_maps(model, models.get_entry(config.model.name).task, batch)
    for tag, image in attention_maps.layer_images(maps or []).items():
        writer.image(step, tag, image)


def abstract_model(config, info: data.DataInfo):
    """(graphdef, abstract params) without allocating anything."""
    build = functools.partial(models.build, config.model, vocab_size=info.vocab_size,
                              num_classes=info.num_classes, dtype=config.dtype, seed=config.seed)
    graphdef, abstract_params = nnx.split(nnx.eval_shape(build), nnx.Param)
    return graphdef, abstract_params, build


def abstract_state(config, info: data.DataInfo):
    """(graphdef, shapes of the train state {'step', 'params', 'opt_state'}), nothing allocated."""
    graphdef, abstract_params, _ = abstract_model(config, info)
    tx, _ = create_optimizer(config.optimizer, config.num_train_steps)
    return graphdef, {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                      "opt_state": jax.eval_shape(tx.init, abstract_params)}


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


class _Stop(Exception):
    """Raised by the SIGTERM handler so that the run ends like a Ctrl-C."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train `config` in `workdir` (resuming if it holds checkpoints); returns final eval metrics."""
    validate(config)
    check_workdir(workdir)

    # Mesh: data parallel over every device of every process.
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    # Data.
    dataset = data.build(config.data, seed=config.seed)
    info = dataset.info
    task = models.get_entry(config.model.name).task
    if models.data_task(config.model.name) != info.kind:
        raise ValueError(f"model {config.model.name!r} (task {task!r}) reads "
                         f"{models.data_task(config.model.name)!r} data but dataset "
                         f"{config.data.name!r} is a {info.kind!r} dataset")

    # Model and optimizer state, created directly with their shardings.
    graphdef, _, build = abstract_model(config, info)
    tx, schedule = create_optimizer(config.optimizer, config.num_train_steps)

    def init_state():
        params = nnx.state(build(), nnx.Param)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    state_shape = jax.eval_shape(init_state)
    state_sharding = jax.tree.map(lambda _: replicated, state_shape)
    num_params = sum(x.size for x in jax.tree.leaves(state_shape["params"]))

    train_step = jax.jit(
        make_train_step(graphdef, task, tx, schedule, grad_accum_steps=config.grad_accum_steps,
                        label_smoothing=config.label_smoothing),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, task),
                        in_shardings=(state_sharding["params"], batch_sharding))

    # Resume, or start.
    manager = checkpoints.Manager(workdir, keep=config.keep_checkpoints)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    restored = manager.restore_latest(state_shape, state_sharding)
    if restored is None:
        state = jax.jit(init_state, out_shardings=state_sharding)()
        start_step, best = 0, None
        _log(f"Starting {config.model.name} ({num_params / 1e6:.2f}M parameters) in {workdir}")
    else:
        state, meta = restored
        start_step, best = int(state["step"]), meta.get("best")
        _log(f"Resuming from step {start_step} of {workdir}")
    base_rng = jax.random.key(config.seed)

    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if start_step == 0:
        writer.hparams(config_lib.flatten(config), {"eval/loss": float("nan")})

    def better(value: float) -> bool:
        return best is None or (value < best if config.best_mode == "min" else value > best)

    def eval_and_checkpoint(step: int) -> dict[str, float]:
        nonlocal best
        metrics = evaluate(config, dataset, eval_step, state["params"], batch_sharding,
                           config.data.eval_split)
        writer.scalars(step, metrics, prefix="eval/")
        _log(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if config.attention_maps:
            write_attention_maps(writer, step, graphdef, state["params"], dataset, config)
        if config.num_samples and task in ("lm", "seq2seq"):
            for i, text in enumerate(sample.samples_for_summary(
                    config, graphdef, state["params"], dataset, seed=step)):
                writer.text(step, f"samples/{i}", text)
        value = metrics[config.best_metric]
        if better(value):
            best = value
            manager.save_best(step, state, {"best": best, "best_metric": config.best_metric})
        return metrics

    # The loop.
    tokens_per_step = config.batch_size * config.data.seq_len
    previous_handler = signal.signal(signal.SIGTERM, _raise_stop)
    final_metrics: dict[str, float] = {}
    compile_start = time.perf_counter()
    first_batch = dataset.train_batch(start_step, global_batch_size=config.batch_size,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count())
    train_step = train_step.lower(state, _global_batch(first_batch, batch_sharding),
                                  base_rng).compile()
    _log(f"compiled the train step in {time.perf_counter() - compile_start:.1f}s")
    profile = config.profile_steps
    try:
        window_start, window_steps = time.perf_counter(), 0
        for step in range(start_step, config.num_train_steps):
            if profile and step == start_step + 2:
                jax.profiler.start_trace(os.path.join(workdir, "tensorboard"))
            local = first_batch if step == start_step else dataset.train_batch(
                step, global_batch_size=config.batch_size, process_index=jax.process_index(),
                process_count=jax.process_count())
            state, metrics = train_step(state, _global_batch(local, batch_sharding), base_rng)
            window_steps += 1
            done = step + 1
            if profile and done == start_step + 2 + profile:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                _log(f"wrote a profiler trace of {profile} steps to {workdir}/tensorboard")
            if done % config.log_every == 0 or done == config.num_train_steps:
                metrics = jax.device_get(metrics)
                elapsed = time.perf_counter() - window_start
                step_time = elapsed / window_steps
                metrics.update(step_time=step_time, tokens_per_second=tokens_per_step / step_time)
                if metrics["loss"] != metrics["loss"]:
                    raise FloatingPointError(f"loss is NaN at step {done}")
                writer.scalars(done, metrics, prefix="train/")
                _log(f"step {done}/{config.num_train_steps} | loss {metrics['loss']:.4f} | "
                     f"{metrics['tokens_per_second']:,.0f} tokens/s | {step_time:.3f} s/step | "
                     f"ETA {_format_eta(step_time * (config.num_train_steps - done))}")
                window_start, window_steps = time.perf_counter(), 0
            if done % config.eval_every == 0 or done == config.num_train_steps:
                final_metrics = eval_and_checkpoint(done)
                window_start = time.perf_counter()
            if done % config.checkpoint_every == 0 or done == config.num_train_steps:
                manager.save(done, state, {"best": best, "data_position": done})
        if start_step >= config.num_train_steps:
            _log(f"already trained for {config.num_train_steps} steps; evaluating")
            final_metrics = evaluate(config, dataset, eval_step, state["params"],
                                     batch_sharding, config.data.eval_split)
    except (KeyboardInterrupt, _Stop):
        _log("interrupted: the last complete checkpoint is kept; re-run the command to resume")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        manager.close()
        writer.close()
    return final_metrics


def _raise_stop(signum, frame):
    raise _Stop(f"received signal {signum}")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str) -> dict[str, float]:
    """`--mode=eval`: evaluate the best (else the latest) checkpoint of `workdir` on `split`."""
    validate(config)
    mesh = data_mesh()
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    dataset = data.build(config.data, seed=config.seed)
    graphdef, state_shape = abstract_state(config, dataset.info)
    params_sharding = jax.tree.map(lambda _: replicated, state_shape["params"])
    manager = checkpoints.Manager(workdir, keep=config.keep_checkpoints)
    found = manager.restore_params(state_shape, jax.tree.map(lambda _: replicated, state_shape))
    manager.close()
    if found is None:
        raise ValueError(f"no checkpoint in {workdir!r} to evaluate")
    params, which, step = found
    eval_step = jax.jit(make_eval_step(graphdef, models.get_entry(config.model.name).task),
                        in_shardings=(params_sharding, batch_sharding))
    metrics = evaluate(config, dataset, eval_step, params, batch_sharding, split)
    _log(f"{which} checkpoint (step {step}) on {split}: "
         + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
            json.dump({"checkpoint": which, "step": step, "split": split, **metrics}, f, indent=2)
    return metrics


def default_workdir(config_flag: str) -> str:
    """`configs/x.py:a=1,smoke` -> `runs/x_a=1,smoke`."""
    path, _, arg = config_flag.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{arg}" if arg else name)


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from ml_collections import config_flags

    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the log
    cfg = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    if flags.FLAGS.coordinator_address:
        # Cross-process collectives of the CPU backend (no effect on accelerator backends).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                   flags.FLAGS.process_id)
    if flags.FLAGS.mode == "train":
        train_and_evaluate(cfg, workdir)
    else:
        evaluate_checkpoint(cfg, workdir, flags.FLAGS.split)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/transformer_lm.py"
                                    "[:arg]", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<config name>[_<arg>]).")
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming), or evaluate the "
                      "best checkpoint.")
    flags.DEFINE_string("split", "test", "Split for --mode=eval.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process "
                        "runs (jax.distributed); off by default.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
