"""Reliability guarantees, each shown by injecting its fault: preemption signals, SIGKILL at any
moment (also inside a checkpoint write), non-finite steps, config and checkpoint mismatches,
corrupted checkpoints, bad settings, malformed data, failing writes, a dead process of two."""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnx import checkpoints, data, optim, train
from attnx import state as state_lib
from attnx.data import checks
from attnx.data.spec import DataInfo, Feature
from helpers import load_config, load_script
from test_train import tiny_lm_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny LM for the subprocess runs: one device, so that start-up and compiles stay short.
TINY = {"data.seq_len": 16, "model.d_model": 16, "model.num_heads": 2, "model.num_layers": 1,
        "model.d_ff": 32, "model.max_len": 16, "batch_size": 2, "eval_batch_size": 2,
        "log_every": 1, "eval_every": 1000, "eval_batches": 1, "num_samples": 0}


def _args(data_dir, **overrides):
    fields = dict(TINY, **{"data.data_dir": data_dir}, **overrides)
    return ["--config=configs/transformer_lm.py:smoke"] + [
        f"--config.{k}={v}" for k, v in fields.items()]


def _env(devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop(checkpoints.FAULT_ENV, None)
    return env


def _popen(args, workdir, env, extra=()):
    return subprocess.Popen([sys.executable, "-m", "attnx.train", *args, f"--workdir={workdir}",
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)


def _read_steps(proc, steps):
    """The lines `proc` prints until it has logged `steps` steps."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        steps -= line.startswith("step ")
        if not steps:
            return lines
    raise AssertionError("".join(lines)[-3000:])


def _tiny_config(data_dir):
    """The config `_args` runs, as a ConfigDict."""
    config = load_config("transformer_lm", "smoke")
    for key, value in dict(TINY, **{"data.data_dir": data_dir}).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def _restore(workdir, config):
    """(state, meta) of the newest readable checkpoint of `workdir`, on one device."""
    tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
    _, shape = state_lib.abstract_state(config, data.build(config.data, seed=0).info, tx)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    manager = checkpoints.Manager(workdir)
    try:
        return manager.restore_latest(shape, jax.tree.map(lambda _: device, shape))
    finally:
        manager.close()


# ----------------------------------------------------------------------------------------------
# Preemption, SIGKILL, multi-host.


def test_sigterm_and_sigint_checkpoint_the_step_and_exit_0(data_dir, tmp_path):
    """SIGTERM (twice: the second arrives while the first is being served) finishes the step,
    checkpoints it and exits 0 saying how to resume; SIGINT after resuming does the same."""
    workdir = tmp_path / "run"
    args = _args(data_dir, num_train_steps=100000, checkpoint_every=100000)
    for signum, resumed in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        proc = _popen(args, workdir, _env())
        lines = _read_steps(proc, 3)
        proc.send_signal(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)
        out = "".join(lines) + proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out[-3000:]
        assert ("Resuming from step" in out) == resumed
        name = signal.Signals(signum).name
        stopped = [line for line in out.splitlines() if line.startswith(f"stopped by {name}")]
        assert stopped and "re-run the same command to resume" in stopped[0], out[-3000:]
        step = int(stopped[0].split("after step ")[1].split(":")[0])
        assert str(step) in os.listdir(workdir / "checkpoints")
    state, _ = _restore(str(workdir), _tiny_config(data_dir))  # fingerprint checked: whole
    assert int(state["step"]) == step


def test_sigkill_at_random_moments_resumes_bit_for_bit(data_dir, tmp_path):
    """10 SIGKILLs (every third inside a checkpoint write, by the fault-injection hook), each
    followed by a restart: the final train state equals the uninterrupted run's bit for bit,
    and no restart ever read a half-written or corrupted checkpoint."""
    chaos_resume = load_script("chaos_resume")
    args = _args(data_dir, num_train_steps=60, checkpoint_every=2, **{"model.dropout_rate": 0.1})
    result = chaos_resume.chaos(args, str(tmp_path / "killed"), kills=10, seed=0, env=_env())
    chaos_resume.run_to_end(args, str(tmp_path / "straight"), _env())
    assert result.kills >= 10 and result.inside_write >= 3, result
    logs = "".join(result.logs)
    assert "corrupted or truncated" not in logs
    assert logs.count("Resuming from step") >= 3
    assert chaos_resume.first_difference(str(tmp_path / "straight"),
                                         str(tmp_path / "killed")) is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killing_one_of_two_processes_ends_the_other(data_dir, tmp_path):
    """Two gloo processes: SIGKILL one mid-run; the other exits with an error naming the lost
    process within 60 s; restarting both resumes from the last checkpoint."""
    workdir = tmp_path / "multi"

    def start(steps):
        port = _free_port()
        return [_popen(_args(data_dir, num_train_steps=steps, checkpoint_every=2, batch_size=4),
                       workdir, _env(), [f"--coordinator_address=127.0.0.1:{port}",
                                         "--num_processes=2", f"--process_id={i}",
                                         "--heartbeat_timeout=10"]) for i in range(2)]

    procs = start(100000)
    while not checkpoints.has_checkpoint(str(workdir)):  # kill once a checkpoint is complete
        _read_steps(procs[0], 1)
    procs[1].send_signal(signal.SIGKILL)
    start_wait = time.monotonic()
    out = procs[0].communicate(timeout=90)[0]
    waited = time.monotonic() - start_wait
    procs[1].wait()
    assert procs[0].returncode != 0 and waited < 60, (waited, out[-3000:])
    assert "another task died" in out or "heartbeat" in out.lower(), out[-3000:]
    procs = start(8)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    assert "Resuming from step" in outs[0]


# ----------------------------------------------------------------------------------------------
# In-process runs.


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A 4-step tiny run with checkpoints at steps 2 and 4: (config, workdir)."""
    config = tiny_lm_config(data_dir, num_train_steps=4, log_every=2, eval_every=100,
                            checkpoint_every=2)
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _copy(finished_run, tmp_path):
    config, workdir = finished_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return config.copy_and_resolve_references(), copy


def test_config_change_on_resume_is_refused_unless_safe_or_allowed(finished_run, tmp_path,
                                                                   capsys):
    config, workdir = _copy(finished_run, tmp_path)
    config.model.d_model = 48
    config.optimizer.learning_rate = 0.01
    with pytest.raises(ValueError, match="allow_config_change") as error:
        train.train_and_evaluate(config, workdir)
    assert "model.d_model: 32 -> 48" in str(error.value)
    assert "optimizer.learning_rate: 0.001 -> 0.01" in str(error.value)
    # Allowed: the checkpoint's shapes then do not fit the model, said before anything is read.
    with pytest.raises(ValueError, match="does not fit") as error:
        train.train_and_evaluate(config, workdir, allow_config_change=True)
    message = str(error.value)
    assert re.search(r"model: \S+ is \(\d+, \d+\) float32 in the model but \(\d+, \d+\) "
                     r"float32 in the checkpoint", message), message
    assert "48" in message and "Nothing was restored" in message
    assert "Event loop is closed" not in capsys.readouterr().err
    # Safe fields only: resumes.
    config, workdir = _copy(finished_run, tmp_path / "safe")
    config.update(num_train_steps=5, log_every=1)
    train.train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert "num_train_steps: 4 -> 5" in out and "Resuming from step 4" in out


def _corrupt(workdir, step, how):
    """Every data file of the checkpoint of `step` truncated to half, or with 64 bytes of 0xff
    written into its middle. Every file, not only the biggest: which arrays land in which file
    depends on Orbax's write threads, and some files hold nothing a restore reads (corrupting
    only the biggest one was sometimes harmless)."""
    files = glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"),
                      recursive=True)
    assert files, f"no data files in checkpoint {step}"
    for path in files:
        size = os.path.getsize(path)
        if how == "truncate":
            os.truncate(path, size // 2)
        else:
            with open(path, "r+b") as f:
                f.seek(size // 2)
                f.write(b"\xff" * min(64, size - size // 2))


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_corrupted_latest_checkpoint_falls_back_to_previous(finished_run, tmp_path, capsys, how):
    """Bytes of the latest checkpoint overwritten (Orbax reads them back silently: the saved
    fingerprint catches it) or its array file truncated: reported by path, set aside, and the
    previous checkpoint restored; when none is left, a clear error."""
    config, workdir = _copy(finished_run, tmp_path)
    _corrupt(workdir, 4, how)
    state, _ = _restore(workdir, config)
    out, err = capsys.readouterr()
    assert int(state["step"]) == 2
    assert os.path.join(workdir, "checkpoints", "4") in out and "trying the previous" in out
    assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "4"))
    assert "Event loop is closed" not in err
    _corrupt(workdir, 2, how)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint of this run"):
        _restore(workdir, config)
    assert "Event loop is closed" not in capsys.readouterr().err


def test_failing_checkpoint_write_stops_the_run_previous_intact(data_dir, tmp_path,
                                                                monkeypatch):
    config = tiny_lm_config(data_dir, num_train_steps=4, log_every=2, eval_every=100,
                            checkpoint_every=2)
    workdir = str(tmp_path / "run")
    monkeypatch.setenv(checkpoints.FAULT_ENV, "fail_in_save@4")
    with pytest.raises(checkpoints.CheckpointError,
                       match="step 4 .* No space left .* step 2 is intact"):
        train.train_and_evaluate(config, workdir)
    monkeypatch.delenv(checkpoints.FAULT_ENV)
    state, _ = _restore(workdir, config)
    assert int(state["step"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    with pytest.raises(ValueError, match="cannot be written"):
        train.train_and_evaluate(config, str(blocker / "run"))


def test_nonfinite_steps_skip_or_stop(data_dir, tmp_path, monkeypatch):
    """A NaN at step 4 (NaN weights in its batch, past the checked first batches): 'skip' runs
    on, leaves the state as it was at that step and counts it in TensorBoard; 'stop' raises
    naming step 4, and the last checkpoint is the one before it."""
    real_build = data.build

    def build_with_nan(*args, **kwargs):
        dataset = real_build(*args, **kwargs)
        real_batch = dataset.train_batch

        def train_batch(position, **kw):
            batch = real_batch(position, **kw)
            if position == 3:
                batch["weights"] = np.full_like(batch["weights"], np.nan)
            return batch

        dataset.train_batch = train_batch
        return dataset

    monkeypatch.setattr(train.data, "build", build_with_nan)
    config = tiny_lm_config(data_dir, num_train_steps=6, log_every=2, eval_every=100,
                            checkpoint_every=2, on_nonfinite="skip")
    train.train_and_evaluate(config, str(tmp_path / "skip"))
    events = EventAccumulator(str(tmp_path / "skip" / "tensorboard"))
    events.Reload()
    counts = {e.step: e.value for e in events.Scalars("train/nonfinite_steps")}
    assert counts == {2: 0, 4: 1, 6: 1}
    state, _ = _restore(str(tmp_path / "skip"), config)
    assert int(state["nonfinite"]["count"]) == 1 and int(state["nonfinite"]["last_step"]) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
    config.on_nonfinite = "stop"
    with pytest.raises(FloatingPointError, match="not finite at step 4"):
        train.train_and_evaluate(config, str(tmp_path / "stop"))
    assert sorted(os.listdir(tmp_path / "stop" / "checkpoints")) == ["2"]


# ----------------------------------------------------------------------------------------------
# Settings and data, before anything compiles.


def _short_error(fn):
    with pytest.raises(ValueError) as error:
        fn()
    lines = "".join(traceback.format_exception(error.value)).splitlines()
    assert len(lines) < 20, "\n".join(lines)
    return str(error.value)


def test_bad_settings_fail_at_validate(data_dir):
    config = tiny_lm_config(data_dir)
    info = data.build(config.data, seed=0).info
    for field, value, expected in [
            ("optimizer.learning_rate", -1.0, "optimizer.learning_rate=-1.0 is not valid"),
            ("batch_size", 0, "batch_size=0 is not valid"),
            ("num_train_steps", -3, "num_train_steps=-3 is not valid"),
            ("on_nonfinite", "ignore", "one of ('stop', 'skip')"),
            ("best_metric", "bleu", "best_metric='bleu'")]:
        bad = config.copy_and_resolve_references()
        if field.startswith("optimizer."):
            bad.optimizer[field.split(".")[1]] = value
        else:
            bad[field] = value
        assert expected in _short_error(lambda: train.validate(bad, info))
    reformer = load_config("reformer_lm", "smoke")
    reformer.data.data_dir = data_dir
    info = data.build(reformer.data, seed=0).info
    for edit, expected in [(lambda c: c.model.lsh_options.update(n_buckets=7), "n_buckets"),
                           (lambda c: c.model.update(axial_shape=(8, 8)), "axial_shape"),
                           (lambda c: c.model.local_options.update(chunk_len=0), "chunk_len")]:
        bad = reformer.copy_and_resolve_references()
        edit(bad)
        assert expected in _short_error(lambda: train.validate(bad, info))


LM_INFO = DataInfo(kind="lm", vocab_size=10, pad_id=0, features={
    "inputs": Feature("int32", (4,)), "targets": Feature("int32", (4,)),
    "weights": Feature("float32", (4,))})
IMAGE_INFO = DataInfo(kind="image_classification", num_classes=3, features={
    "image": Feature("float32", (2, 2, 1)), "label": Feature("int32", ()),
    "weights": Feature("float32", ())})


def _lm_batch():
    return {"inputs": np.ones((3, 4), np.int32), "targets": np.ones((3, 4), np.int32),
            "weights": np.ones((3, 4), np.float32)}


def _image_batch():
    return {"image": np.zeros((3, 2, 2, 1), np.float32), "label": np.zeros(3, np.int32),
            "weights": np.ones(3, np.float32)}


@pytest.mark.parametrize("info,make,key,edit,expected", [
    (LM_INFO, _lm_batch, "inputs", lambda x: x[:, :3], "batch shape (3, 3)"),
    (LM_INFO, _lm_batch, "targets", lambda x: x.astype(np.int64), "dtype int64"),
    (LM_INFO, _lm_batch, "inputs", lambda x: np.where(np.arange(3)[:, None] == 1, 12, x),
     "example 71: value 12 is outside the vocabulary [0, 10)"),
    (IMAGE_INFO, _image_batch, "label", lambda x: np.array([0, 1, 3], np.int32),
     "example 72: value 3 is outside the classes [0, 3)"),
    (IMAGE_INFO, _image_batch, "image", lambda x: np.where(np.arange(3)[:, None, None, None]
                                                           == 2, np.nan, x).astype(np.float32),
     "example 72: holds non-finite values")])
def test_malformed_batches_name_feature_split_and_example(info, make, key, edit, expected):
    batch = make()
    batch[key] = edit(batch[key])
    with pytest.raises(ValueError) as error:
        checks.check_batch(info, batch, "train", np.array([70, 71, 72]))
    assert f"feature {key!r} of split 'train'" in str(error.value)
    assert expected in str(error.value)
    checks.check_batch(info, make(), "train", np.array([70, 71, 72]))


def test_malformed_data_stops_the_run_before_a_step(data_dir, tmp_path, monkeypatch):
    real_build = data.build

    def build_with_bad_ids(*args, **kwargs):
        dataset = real_build(*args, **kwargs)
        real_batch = dataset.train_batch

        def train_batch(position, **kw):
            batch = real_batch(position, **kw)
            batch["inputs"][1, 0] = 10_000
            return batch

        dataset.train_batch = train_batch
        return dataset

    monkeypatch.setattr(train.data, "build", build_with_bad_ids)
    with pytest.raises(ValueError, match="feature 'inputs' of split 'train', example .*"
                                         "outside the vocabulary"):
        train.train_and_evaluate(tiny_lm_config(data_dir), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "6")
