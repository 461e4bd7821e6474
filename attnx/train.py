r"""Train and evaluate a model from an ml_collections config.

    python -m attnx.train --config=configs/transformer_lm.py[:arg] [--workdir=DIR] \
        [--config.a.b=value ...] [--mode=train|eval] [--split=test]

`--workdir` defaults to `runs/<config name>[_<arg>]`. Re-running the same command resumes from the
newest complete checkpoint. `train_and_evaluate` reads top to bottom: check the config, mesh, data
and task, optimizer, state (sharded by annotation), the jitted and donated steps, resume, then the
loop; what happens every so many steps (progress lines, evaluation with samples, attention maps
and the best checkpoint, checkpoints, a profiler trace) are the small named pieces above it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
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

from attnx import attention_maps, checkpoints, config_lib, data, models, optim, tasks
from attnx import state as state_lib
from attnx.data import DataInfo, checks
from attnx.summary import SummaryWriter

Array = jax.Array

NONFINITE_POLICIES = ("stop", "skip")
# Fields a resumed run may change without --allow_config_change: they do not change what the
# steps compute (run length, cadences, evaluation size, summaries, where the data lives).
SAFE_ON_RESUME = frozenset({
    "num_train_steps", "log_every", "eval_every", "checkpoint_every", "eval_batches",
    "keep_checkpoints", "profile_steps", "attention_maps", "attention_map_len", "num_samples", "sample_len",
    "sample_prompt_len", "sample_temperature", "sample_top_k", "on_nonfinite", "data.data_dir"})
# Train batches whose values (token ids, labels, NaN) are checked at the start of each run; the
# shapes and dtypes of every batch are checked.
CHECKED_BATCHES = 2


# ----------------------------------------------------------------------------------------------
# Config checks: everything that can be wrong is reported before any data is read or compiled.


def _require(ok: bool, field: str, value: Any, valid: str) -> None:
    if not ok:
        raise ValueError(f"{field}={value!r} is not valid: it must be {valid}")


def _check_trainer_fields(config: ml_collections.ConfigDict) -> None:
    """The trainer's own fields: sizes, cadences, optimizer numbers, policies."""
    opt = config.optimizer
    lr = opt.learning_rate
    _require(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
             "optimizer.learning_rate", lr, "a finite number > 0")
    _require(opt.warmup_steps >= 0, "optimizer.warmup_steps", opt.warmup_steps, ">= 0")
    _require(opt.clip_norm is None or opt.clip_norm > 0, "optimizer.clip_norm", opt.clip_norm,
             "> 0 or None")
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, ">= 0")
    for field in ("batch_size", "eval_batch_size", "grad_accum_steps", "log_every",
                  "eval_every", "checkpoint_every", "keep_checkpoints"):
        _require(config[field] >= 1, field, config[field], "an int >= 1")
    _require(config.num_train_steps >= 0, "num_train_steps", config.num_train_steps, ">= 0")
    for field in ("eval_batches", "profile_steps"):
        _require(config[field] is None or config[field] >= 1, field, config[field],
                 ">= 1 or None")
    _require(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing,
             "in [0, 1)")
    _require(config.on_nonfinite in NONFINITE_POLICIES, "on_nonfinite", config.on_nonfinite,
             f"one of {NONFINITE_POLICIES}")
    _require(config.best_mode in ("min", "max"), "best_mode", config.best_mode,
             "'min' or 'max'")
    n_dev = jax.device_count()
    if config.batch_size % (n_dev * config.grad_accum_steps):
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of "
                         f"devices ({n_dev}) times grad_accum_steps ({config.grad_accum_steps})")
    if config.eval_batch_size % jax.process_count():
        raise ValueError(f"eval_batch_size={config.eval_batch_size} must be divisible by the "
                         f"number of processes ({jax.process_count()})")
    optim.create_optimizer(config.optimizer, config.num_train_steps)


def _trace_forward(config: ml_collections.ConfigDict, info: DataInfo, task: tasks.Task) -> None:
    """Build the model and run its training forward on an abstract batch of the data's
    features (`jax.eval_shape`: nothing allocated or compiled), so that every check the model
    and its mechanisms make (option values, lengths) fails here."""
    graphdef, params, model_state = state_lib.split(
        nnx.eval_shape(lambda: state_lib.build_model(config, info)))
    batch = {k: jax.ShapeDtypeStruct((1,) + tuple(f.shape), f.dtype)
             for k, f in info.features.items()}

    def forward(params, model_state, batch, rng):
        model = state_lib.merge(graphdef, {"params": params, "model_state": model_state})
        return task.forward(model, batch, rng)

    jax.eval_shape(forward, params, model_state, batch, jax.random.key(0))


def validate(config: ml_collections.ConfigDict, info: DataInfo | None = None) -> None:
    """Check every setting before anything is compiled; with the data's `info`, also that the
    task can read the data and that the model accepts it.

    Raises:
      ValueError: naming the field, for a trainer setting out of range, model settings the
        model rejects, and (with `info`) mechanism options or lengths the model's forward
        rejects (e.g. LSH buckets, chunk lengths, axial positions that do not cover the
        sequence) or data the task cannot read.
    """
    _check_trainer_fields(config)
    entry = models.get_entry(config.model.name)
    models.model_settings(config.model, vocab_size=2, num_classes=2, image_shape=(1, 1, 1),
                          clip_shape=(1, 1, 1, 1), dtype=config.dtype)
    max_len = config.model.get("max_len")
    extra = entry.prefix_tokens
    if max_len is not None and config.data.seq_len + extra > max_len:
        raise ValueError(f"data.seq_len={config.data.seq_len} (+{extra} for [CLS]) exceeds "
                         f"model.max_len={max_len}, the positional table's length")
    if info is None:
        return
    task = state_lib.check_data(config, info)
    metrics = task.metrics(0.0, 0.0, 1.0)
    _require(config.best_metric in metrics, "best_metric", config.best_metric,
             f"one of the task's metrics {sorted(metrics)}")
    try:
        _trace_forward(config, info, task)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.model (model {config.model.name!r}) does not fit: {e}") from None


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


def _flat_json(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_json(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """`{field: (saved value, new value)}` for every field that differs (absent: `'<absent>'`)."""
    old = _flat_json(saved)
    new = _flat_json(json.loads(config.to_json_best_effort()))
    return {k: (old.get(k, "<absent>"), new.get(k, "<absent>"))
            for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")}


def check_resume_config(config: ml_collections.ConfigDict, workdir: str,
                        allow_config_change: bool) -> None:
    """Refuse to resume `workdir`'s checkpoints with a config that differs from its saved
    `config.json` in a field outside `SAFE_ON_RESUME`, unless `allow_config_change`."""
    path = os.path.join(workdir, "config.json")
    if not (os.path.exists(path) and checkpoints.has_checkpoint(workdir)):
        return
    with open(path) as f:
        changes = config_changes(json.load(f), config)
    listed = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
    unsafe = sorted(set(changes) - SAFE_ON_RESUME)
    if unsafe and not allow_config_change:
        raise ValueError(
            f"{workdir} holds checkpoints of another config ({path}); it differs in:\n{listed}\n"
            f"{unsafe} may change what the run computes. Resume with the saved config, use "
            "another --workdir, or pass --allow_config_change to resume anyway")
    if changes:
        _log(f"config changes since {path} was written (resuming with the new values):\n{listed}")


# ----------------------------------------------------------------------------------------------
# The step functions.


def make_train_step(graphdef, task: tasks.Task, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum_steps: int = 1,
                    label_smoothing: float = 0.0) -> Callable:
    """`train_step(state, batch, base_rng) -> (state, metrics)`, pure; the caller jits it.

    The dropout/hashing key of step s is `fold_in(base_rng, s)`, so the key is not state and a
    resumed run replays the uninterrupted one. A step whose loss or gradient norm is not finite
    changes nothing but the step and `state['nonfinite']` (count, last such step). With `grad_accum_steps = a`, the batch is cut into a
    microbatches whose gradients are summed before one update (same result as one big batch; the
    model state, e.g. BatchNorm statistics, is updated by each microbatch in turn).
    """

    def train_step(state, batch, base_rng):
        step = state["step"]
        rng = jax.random.fold_in(base_rng, step)
        total_weight = jnp.maximum(batch["weights"].astype(jnp.float32).sum(), 1.0)

        def micro_grad(model_state, micro_batch, micro_rng):
            def objective(params):
                model = state_lib.merge(graphdef, {"params": params, "model_state": model_state})
                sums = tasks.loss_sums(*task.forward(model, micro_batch, micro_rng),
                                       label_smoothing)
                return sums[0] / total_weight, (sums, state_lib.split(model)[2])
            grads, (sums, new_model_state) = jax.grad(objective, has_aux=True)(state["params"])
            return grads, sums, new_model_state

        if grad_accum_steps == 1:
            grads, (loss_sum, correct, weight), model_state = micro_grad(
                state["model_state"], batch, rng)
        else:
            # Row r goes to microbatch r % a, so every microbatch keeps the 'data' sharding.
            micro = jax.tree.map(
                lambda x: x.reshape((-1, grad_accum_steps) + x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, inputs):
                grads, sums, model_state = carry
                micro_batch, index = inputs
                g, s, model_state = micro_grad(model_state, micro_batch,
                                               jax.random.fold_in(rng, index))
                return (jax.tree.map(jnp.add, grads, g), jax.tree.map(jnp.add, sums, s),
                        model_state), None

            zero = (jax.tree.map(jnp.zeros_like, state["params"]), (0.0, 0.0, 0.0),
                    state["model_state"])
            (grads, (loss_sum, correct, weight), model_state), _ = jax.lax.scan(
                body, zero, (micro, jnp.arange(grad_accum_steps)))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        loss, grad_norm = loss_sum / jnp.maximum(weight, 1.0), optax.tree.norm(grads)
        # A step whose loss or gradient norm is not finite leaves the state as it was (and is
        # counted); which the trainer then does is `config.on_nonfinite`. No host sync here.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                           (params, opt_state, model_state),
                           (state["params"], state["opt_state"], state["model_state"]))
        count = state["nonfinite"]["count"] + (~finite).astype(jnp.int32)
        nonfinite = {"count": count,
                     "last_step": jnp.where(finite, state["nonfinite"]["last_step"], step)}
        metrics = {
            "loss": loss,
            "accuracy": correct / jnp.maximum(weight, 1.0),
            "grad_norm": grad_norm,
            "learning_rate": schedule(step),
            "finite": finite.astype(jnp.float32),
            "nonfinite_steps": count,
        }
        return {"step": step + 1, "params": new[0], "opt_state": new[1],
                "model_state": new[2], "nonfinite": nonfinite}, metrics

    return train_step


def make_eval_step(graphdef, task: tasks.Task) -> Callable:
    """`eval_step(eval_state, batch) -> (loss_sum, correct_sum, weight_sum)`: no dropout, and
    the model state (BatchNorm running averages) is read, never changed."""

    def eval_step(eval_state, batch):
        model = state_lib.merge(graphdef, eval_state)
        return tasks.loss_sums(*task.forward(model, batch, None))

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


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def evaluate(config, task: tasks.Task, dataset, eval_step, eval_state, batch_sharding,
             split: str) -> dict[str, float]:
    """The task's metrics (loss, accuracy, ...) over one pass of `split`."""
    totals = np.zeros(3, np.float64)
    where = dict(global_batch_size=config.eval_batch_size, process_index=jax.process_index(),
                 process_count=jax.process_count())
    for i, local in enumerate(dataset.eval_batches(split, max_batches=config.eval_batches,
                                                   **where)):
        checks.check_batch(dataset.info, local, split, dataset.eval_indices(split, i, **where),
                           values=i == 0)
        sums = eval_step(eval_state, _global_batch(local, batch_sharding))
        totals += np.asarray(jax.device_get(sums), np.float64)
    return task.metrics(*totals)


class Progress:
    """Progress lines and train scalars: step time and tokens/s (examples/s for data without a
    sequence length: images, clips) over the steps since the last."""

    def __init__(self, config, info: data.DataInfo, writer: SummaryWriter):
        self.total = config.num_train_steps
        self.unit = "tokens" if info.seq_len is not None else "examples"
        self.per_step = config.batch_size * (info.seq_len or 1)
        self.writer = writer
        self.restart()

    def restart(self) -> None:
        """Start a new timing window (after anything that is not a train step)."""
        self.start, self.steps = time.perf_counter(), 0

    def report(self, done: int, metrics: dict[str, Any]) -> None:
        metrics = jax.device_get(metrics)
        step_time = (time.perf_counter() - self.start) / max(self.steps, 1)
        rate = self.per_step / step_time
        metrics.update({"step_time": step_time, f"{self.unit}_per_second": rate})
        self.writer.scalars(done, metrics, prefix="train/")
        eta = int(step_time * (self.total - done))
        _log(f"step {done}/{self.total} | loss {metrics['loss']:.4f} | "
             f"{rate:,.0f} {self.unit}/s | {step_time:.3f} s/step | "
             f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
        self.restart()


class Evaluator:
    """Evaluation at a step: metrics to TensorBoard and the log, attention maps and samples if
    configured, and the best checkpoint by `config.best_metric` (ties keep the earlier one)."""

    def __init__(self, config, task: tasks.Task, dataset, eval_step, graphdef, batch_sharding,
                 writer: SummaryWriter, manager: checkpoints.Manager, best: float | None):
        self.config, self.task, self.dataset = config, task, dataset
        self.eval_step, self.graphdef, self.batch_sharding = eval_step, graphdef, batch_sharding
        self.writer, self.manager, self.best = writer, manager, best
        self.maps_unavailable = False

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.config.best_mode == "min" else value > self.best

    def __call__(self, step: int, state: state_lib.State) -> dict[str, float]:
        config, eval_state = self.config, state_lib.eval_state(state)
        metrics = evaluate(config, self.task, self.dataset, self.eval_step, eval_state,
                           self.batch_sharding, config.data.eval_split)
        self.writer.scalars(step, metrics, prefix="eval/")
        _log(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if config.attention_maps or (config.num_samples and self.task.summary_samples):
            model = state_lib.merge(self.graphdef, jax.device_get(eval_state))
            if config.attention_maps:
                self._write_maps(step, model)
            if config.num_samples and self.task.summary_samples:
                for i, text in enumerate(self.task.summary_samples(config, model, self.dataset,
                                                                   step)):
                    self.writer.text(step, f"samples/{i}", text)
        if self.improves(metrics[config.best_metric]):
            self.best = metrics[config.best_metric]
            self.manager.save_best(step, eval_state, {"best": self.best,
                                                 "best_metric": config.best_metric})
        return metrics

    def _write_maps(self, step: int, model) -> None:
        """Images of every layer's attention on the first evaluation example (its first
        `config.attention_map_len` tokens); a model that draws none says so, once."""
        if self.maps_unavailable:
            return
        batch = next(iter(self.dataset.eval_batches(self.config.data.eval_split,
                                                    global_batch_size=1, max_batches=1)))
        length = self.config.attention_map_len
        if length:
            batch = {k: v[:, :length] if np.ndim(v) >= 2 else v for k, v in batch.items()}
        maps = attention_maps.model_maps(model, self.task, batch)
        if maps is None:
            self.maps_unavailable = True
            _log(f"attention_maps: {self.config.model.name} on task {self.task.name!r} draws no "
                 "attention maps; none are written")
            return
        for tag, image in attention_maps.layer_images(maps).items():
            self.writer.image(step, tag, image)


class Profile:
    """A JAX profiler trace of `num_steps` steps, from the third step of this run on."""

    def __init__(self, workdir: str, start_step: int, num_steps: int | None):
        self.logdir = os.path.join(workdir, "tensorboard")
        self.first, self.num_steps = start_step + 2, num_steps

    def before(self, step: int) -> None:
        if self.num_steps and step == self.first:
            jax.profiler.start_trace(self.logdir)

    def after(self, done: int, state: Any) -> None:
        if self.num_steps and done == self.first + self.num_steps:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            _log(f"wrote a profiler trace of {self.num_steps} steps to {self.logdir}")


def restore_or_init(config, info, tx, manager: checkpoints.Manager, state_shape, state_sharding,
                    workdir: str) -> tuple[state_lib.State, int, float | None]:
    """(state, start step, best metric so far) from the newest complete checkpoint that reads
    back whole (see `checkpoints.Manager.restore_latest`), or fresh."""
    restored = manager.restore_latest(state_shape, state_sharding, log=_log)
    if restored is None:
        state = jax.jit(state_lib.init_fn(config, info, tx), out_shardings=state_sharding)()
        _log(f"Starting {config.model.name} ({state_lib.num_params(state_shape) / 1e6:.2f}M "
             f"parameters) in {workdir}")
        return state, 0, None
    state, meta = restored
    _log(f"Resuming from step {int(state['step'])} of {workdir}")
    return state, int(state["step"]), meta.get("best")


class TrainBatches:
    """`train_batches(step)`: global train batch `step`, sharded; every batch's shapes and
    dtypes, and the values of the first `CHECKED_BATCHES` of the run, checked against the
    dataset's features (`attnx.data.checks`)."""

    def __init__(self, config, dataset, batch_sharding: NamedSharding, start_step: int):
        self.dataset, self.split, self.sharding = dataset, config.data.train_split, batch_sharding
        self.checked_until = start_step + CHECKED_BATCHES
        self.where = dict(global_batch_size=config.batch_size,
                          process_index=jax.process_index(), process_count=jax.process_count())

    def __call__(self, step: int) -> dict[str, Array]:
        local = self.dataset.train_batch(step, **self.where)
        checks.check_batch(self.dataset.info, local, self.split,
                           self.dataset.train_indices(step, **self.where),
                           values=step < self.checked_until)
        return _global_batch(local, self.sharding)


def _due(done: int, every: int, last: int) -> bool:
    return done % every == 0 or done == last


class NonfiniteGuard:
    """`config.on_nonfinite` at the steps where the host reads the state anyway (logging,
    evaluation, checkpoints): 'stop' raises naming the step, before anything is saved after it;
    'skip' logs the skipped steps (TensorBoard counts them: `train/nonfinite_steps`)."""

    def __init__(self, policy: str, state: state_lib.State):
        self.policy = policy
        self.seen = int(jax.device_get(state["nonfinite"]["count"]))

    def __call__(self, done: int, state: state_lib.State) -> None:
        count, last = (int(x) for x in jax.device_get(
            (state["nonfinite"]["count"], state["nonfinite"]["last_step"])))
        if count == self.seen:
            return
        new, self.seen = count - self.seen, count
        what = (f"the loss or gradient norm was not finite at step {last + 1} ({new} such "
                f"step(s) by step {done}; their updates were not applied)")
        if self.policy == "stop":
            raise FloatingPointError(f"{what}; stopping (config.on_nonfinite='stop'); the last "
                                     "checkpoint before it is kept")
        _log(f"skipped: {what}")


class Preemption:
    """SIGTERM and SIGINT while training: the step in progress finishes, the loop checkpoints
    it and ends normally (exit status 0). A second signal while saving is noted, not obeyed.
    With several processes, they agree at logging steps (where they synchronise anyway)."""

    def __init__(self, sync_every: int, last: int):
        self.signum: int | None = None
        self.sync_every, self.last = sync_every, last
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            _log(f"received {signal.Signals(signum).name}: checkpointing after this step")
        else:
            _log(f"received {signal.Signals(signum).name} again: still saving, please wait")

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def requested(self, done: int) -> bool:
        """Whether to stop after step `done` (every process gets the same answer)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if not _due(done, self.sync_every, self.last):
            return False
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
        return bool(np.max(flags))

    def report(self, done: int, workdir: str) -> None:
        name = "a signal" if self.signum is None else signal.Signals(self.signum).name
        _log(f"stopped by {name} after step {done}: checkpoint saved "
             f"in {workdir}; re-run the same command to resume from step {done}")


# ----------------------------------------------------------------------------------------------
# The run.


def _duration(seconds: float) -> str:
    """`75.2` -> '1m15s'; `3725` -> '1h02m05s'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def log_summary(config, workdir: str, manager: checkpoints.Manager, metrics: dict[str, float],
                steps_run: int, seconds: float) -> None:
    """The run's last line: its steps and wall time, the final evaluation, and the best
    checkpoint by `config.best_metric` (what `--mode=eval` and `attnx.sample` read)."""
    final = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    best_step = manager.best_step()
    best = "no best checkpoint"
    if best_step is not None:
        best = (f"best checkpoint: step {best_step} "
                f"({os.path.join(workdir, 'best', str(best_step))})")
    _log(f"done: {config.num_train_steps} steps ({steps_run} in this run, {_duration(seconds)});"
         f" final eval: {final}; {best}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, float]:
    """Train `config` in `workdir` (resuming if it holds checkpoints); returns final eval metrics
    (empty if a signal stopped the run before its end: see `Preemption`)."""
    run_start = time.perf_counter()
    validate(config)  # the settings first: before any data is prepared
    check_workdir(workdir)
    dataset = data.build(config.data, seed=config.seed)
    validate(config, dataset.info)
    task = state_lib.check_data(config, dataset.info)
    check_resume_config(config, workdir, allow_config_change)

    # Mesh: data parallel over every device of every process.
    mesh = data_mesh()
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    # Optimizer; state shapes and shardings; the jitted steps.
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state_shape = state_lib.abstract_state(config, dataset.info, tx)
    state_sharding = state_lib.shardings(state_shape, mesh)
    train_step = jax.jit(
        make_train_step(graphdef, task, tx, schedule, grad_accum_steps=config.grad_accum_steps,
                        label_smoothing=config.label_smoothing),
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, task),
                        in_shardings=(state_lib.eval_state(state_sharding), batch_sharding))

    # Resume, or start.
    manager = checkpoints.Manager(workdir, keep=config.keep_checkpoints)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    last, final_metrics = config.num_train_steps, {}
    try:
        state, start_step, best = restore_or_init(config, dataset.info, tx, manager, state_shape,
                                                  state_sharding, workdir)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        if start_step == 0:
            writer.hparams(config_lib.flatten(config))
        if start_step >= last:
            _log(f"already trained for {last} steps; evaluating")
            final_metrics = evaluate(config, task, dataset, eval_step,
                                     state_lib.eval_state(state), batch_sharding,
                                     config.data.eval_split)
            log_summary(config, workdir, manager, final_metrics, 0,
                        time.perf_counter() - run_start)
            return final_metrics
        evaluator = Evaluator(config, task, dataset, eval_step, graphdef, batch_sharding, writer,
                              manager, best)
        progress, profile = Progress(config, dataset.info, writer), Profile(workdir, start_step,
                                                              config.profile_steps)
        guard, train_batch = NonfiniteGuard(config.on_nonfinite, state), TrainBatches(
            config, dataset, batch_sharding, start_step)
        base_rng = jax.random.key(config.seed)

        # The loop.
        with Preemption(config.log_every, last) as preemption:
            compile_start, batch = time.perf_counter(), train_batch(start_step)
            compiled_step = train_step.lower(state, batch, base_rng).compile()
            _log(f"compiled the train step in {time.perf_counter() - compile_start:.1f}s")
            progress.restart()
            for step in range(start_step, last):
                profile.before(step)
                batch = batch if step == start_step else train_batch(step)
                state, metrics = compiled_step(state, batch, base_rng)
                done = step + 1
                progress.steps += 1
                profile.after(done, state)
                if _due(done, config.log_every, last):
                    guard(done, state)
                    progress.report(done, metrics)
                if _due(done, config.eval_every, last):
                    guard(done, state)
                    final_metrics = evaluator(done, state)
                    progress.restart()
                stop = preemption.requested(done)
                if stop or _due(done, config.checkpoint_every, last):
                    guard(done, state)
                    manager.save(done, state, {"best": evaluator.best, "data_position": done})
                if stop:
                    manager.wait()
                    preemption.report(done, workdir)
                    break
        if done == last:
            log_summary(config, workdir, manager, final_metrics, last - start_step,
                        time.perf_counter() - run_start)
    except KeyboardInterrupt:
        _log("interrupted: the last complete checkpoint is kept; re-run the command to resume")
        raise
    finally:
        manager.close()
        writer.close()
    return final_metrics


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str) -> dict[str, float]:
    """`--mode=eval`: evaluate the best (else the latest) checkpoint of `workdir` on `split`."""
    mesh = data_mesh()
    batch_sharding = NamedSharding(mesh, P("data"))
    dataset = data.build(config.data, seed=config.seed)
    validate(config, dataset.info)
    task = state_lib.check_data(config, dataset.info)
    tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state_shape = state_lib.abstract_state(config, dataset.info, tx)
    state_sharding = state_lib.shardings(state_shape, mesh)
    manager = checkpoints.Manager(workdir, keep=config.keep_checkpoints)
    found = manager.restore_eval_state(state_shape, state_sharding)
    manager.close()
    if found is None:
        raise ValueError(f"no checkpoint in {workdir!r} to evaluate")
    eval_state, which, step = found
    eval_step = jax.jit(make_eval_step(graphdef, task),
                        in_shardings=(state_lib.eval_state(state_sharding), batch_sharding))
    metrics = evaluate(config, task, dataset, eval_step, eval_state, batch_sharding, split)
    _log(f"{which} checkpoint (step {step}) on {split}: "
         + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if jax.process_index() == 0:
        path = os.path.join(workdir, f"eval_{split}.json")
        with open(path + ".tmp", "w") as f:  # whole or absent: a sweep reads it as "done"
            json.dump({"checkpoint": which, "step": step, "split": split, **metrics}, f, indent=2)
        os.replace(path + ".tmp", path)
    return metrics


def default_workdir(config_flag: str) -> str:
    """`configs/x.py:a=1,smoke` -> `runs/x_a=1,smoke`."""
    path, _, arg = config_flag.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{arg}" if arg else name)


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from ml_collections import config_flags

    from attnx import distributed

    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the log
    cfg = flags.FLAGS.config
    workdir = flags.FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"]))
    distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                           flags.FLAGS.process_id,  # or auto-detected in a multi-task srun step
                           heartbeat_timeout=flags.FLAGS.heartbeat_timeout)
    if flags.FLAGS.mode == "train":
        train_and_evaluate(cfg, workdir, allow_config_change=flags.FLAGS.allow_config_change)
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
                        "runs (jax.distributed); without it, a multi-task srun step is detected.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
    flags.DEFINE_integer("heartbeat_timeout", 30, "Seconds without a heartbeat after which the "
                         "other processes of a multi-process run treat a process as dead.")
    flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose saved config.json "
                      "differs from --config in fields that change what the run computes.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    from attnx import cli

    _define_flags()
    cli.run(main)
