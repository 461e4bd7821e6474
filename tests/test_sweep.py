"""`python -m attnx.sweep`: grid expansion and naming, bad grids, the local launcher (pinning,
failures, stopping), real sweeps (killed and re-run; summary, plots and the HParams dashboard;
submitit's local executor with a failing run) and seed groups."""

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from attnx import sweep
from helpers import CONFIG_DIR

REPO = os.path.dirname(CONFIG_DIR)
LISTOPS = os.path.join(CONFIG_DIR, "lra_listops.py")
LM = os.path.join(CONFIG_DIR, "transformer_lm.py")


# ----------------------------------------------------------------------------------------------
# Declaring and expanding a grid.


def test_grid_helpers():
    lr = sweep.axis("optimizer.learning_rate", [1e-3, 3e-4])
    assert sweep.product(sweep.axis("seed", [0, 1]), lr) == [
        {"seed": 0, "optimizer.learning_rate": 1e-3}, {"seed": 0, "optimizer.learning_rate": 3e-4},
        {"seed": 1, "optimizer.learning_rate": 1e-3}, {"seed": 1, "optimizer.learning_rate": 3e-4}]
    assert sweep.zipped(sweep.axis("seed", [0, 1]), lr) == [
        {"seed": 0, "optimizer.learning_rate": 1e-3}, {"seed": 1, "optimizer.learning_rate": 3e-4}]
    assert sweep.chain(lr, [{":model": "lstm"}]) == lr + [{":model": "lstm"}]
    assert sweep.parse_axis("seed=0, 1,2") == [{"seed": "0"}, {"seed": "1"}, {"seed": "2"}]
    with pytest.raises(ValueError, match="'seed' is set by two"):
        sweep.product(sweep.axis("seed", [0]), sweep.axis("seed", [1]))
    with pytest.raises(ValueError, match=r"equal lengths, got \[2, 1\]"):
        sweep.zipped(lr, sweep.axis("seed", [0]))
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        sweep.parse_axis("seed")


def test_run_names_are_stable_safe_and_order_independent():
    assert sweep.run_name({"seed": 1, ":attention": "lsh"}) == "attention=lsh,seed=1"
    assert sweep.run_name({":attention": "lsh", "seed": 1}) == "attention=lsh,seed=1"
    assert (sweep.run_name({"data.path": "/data/en wik8", "x": True})
            == "data.path=_data_en_wik8,x=true")
    assert sweep.run_name({"optimizer.learning_rate": 3e-4}) == "optimizer.learning_rate=0.0003"
    assert sweep.run_name({}) == "base"
    long_a, long_b = ({"data.path": "p" * 200 + suffix} for suffix in ("a", "b"))
    assert len(sweep.run_name(long_a)) == 100
    assert sweep.run_name(long_a) != sweep.run_name(long_b)
    assert sweep.run_name(long_a) == sweep.run_name(dict(long_a))


def test_expand_lra_mechanism_sweep_into_workdirs_and_commands():
    entries = sweep.config_sweep(LISTOPS, "smoke")
    runs = sweep.expand(f"{LISTOPS}:smoke", entries, workdir="W", python="python",
                        shared={"data.data_dir": "/tmp/tfds"})
    assert [r.name for r in runs] == ["attention=dense", "attention=flash", "attention=lsh",
                                      "attention=local", "attention=longformer", "model=lstm"]
    lsh, lstm = runs[2], runs[5]
    assert lsh.command == ("python", "-m", "attnx.train",
                           f"--config={LISTOPS}:smoke,attention=lsh",
                           "--workdir=W/attention=lsh", "--config.data.data_dir=/tmp/tfds")
    assert lstm.command[3] == f"--config={LISTOPS}:smoke,model=lstm"
    assert lsh.changes["model.attention"] == ["dense", "lsh"]
    assert runs[4].changes["model.name"] == ["transformer_classifier", "longformer_classifier"]
    assert "data.data_dir" not in lsh.changes  # shared by every run: not a difference
    assert (lsh.num_train_steps, lsh.best_metric, lsh.best_mode) == (20, "accuracy", "max")


@pytest.mark.parametrize("config, expected", [
    ("lra_listops.py", 6), ("lra_pathfinder.py", 6), ("transformer_lm.py", 3),
    ("video_divided.py", 6), ("video_keyframe.py", 2), ("crossmodal_qa.py", 7),
    ("maxvit_pathfinder.py", 4), ("vit_pathfinder.py", 2), ("cnn_pathfinder.py", 2),
    ("reformer_duplication.py", 4)])
def test_every_declared_sweep_expands_into_distinct_runs(config, expected):
    """The sweeps experiments/ README files give: each resolves to distinct configs."""
    path = os.path.join(CONFIG_DIR, config)
    runs = sweep.expand(path, sweep.config_sweep(path, None), workdir="W", python="python")
    assert len(runs) == expected == len({r.name for r in runs})
    assert sum(not r.changes for r in runs) <= 1  # at most one run is the config as it is


def test_expand_field_overrides_and_replaced_arguments():
    grid = sweep.product(sweep.axis(":attention", ["dense", "lsh"]),
                         sweep.axis("optimizer.learning_rate", [1e-3, "3e-4"]),
                         [{"model.dropout_rate": 0, "attention_maps": "true"}])
    runs = sweep.expand(f"{LISTOPS}:attention=local,smoke", grid, workdir="W", python="py")
    assert len(runs) == 4
    run = runs[3]
    assert run.name == ("attention=lsh,attention_maps=true,model.dropout_rate=0.0,"
                        "optimizer.learning_rate=0.0003")
    assert run.command == (
        "py", "-m", "attnx.train", f"--config={LISTOPS}:attention=lsh,smoke",
        f"--workdir=W/{run.name}", "--config.optimizer.learning_rate=0.0003",
        "--config.model.dropout_rate=0.0", "--config.attention_maps=true")


@pytest.mark.parametrize("entries,message", [
    ([{"optimizer.learning_rat": 1e-3}],
     r"'optimizer.learning_rat' is not a field of the config; nearest: optimizer.learning_rate"),
    ([{":atention": "lsh"}], r"unknown config argument 'atention'.*known: attention, lra, model"),
    ([{"seed": "abc"}], r"seed='abc' is not a int"),
    ([{"seed": 1.5}], r"seed=1.5 is a float, the field is a int"),
    ([{"attention_maps": 1}], r"attention_maps=1 is a int, the field is a bool"),
    ([{"model.attention_options": "x"}], r"'model.attention_options' is not a field"),
    ([{"profile_steps": None}], r"profile_steps=None is a NoneType"),
    ([], r"the sweep is empty"),
    (["seed=1"], r"an entry must be a dict"),
    ([{"seed": 1}, {"seed": "1"}], r"sweep entry 1 .* same run name 'seed=1'"),
    ([{"seed": 0}, {"batch_size": 8}], r"sweep entry 1 .* same config as sweep entry 0"),
])
def test_bad_sweep_entries_are_errors_naming_them(entries, message):
    with pytest.raises(ValueError, match=message):
        sweep.expand(f"{LISTOPS}:smoke", entries, workdir="W")


def test_bad_cli_sweep_fails_before_any_run(tmp_path):
    workdir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "attnx.sweep", f"--config={LM}:smoke", f"--workdir={workdir}",
         "--sweep=optimizer.lr=1e-3,3e-3"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert "'optimizer.lr' is not a field" in result.stderr
    assert not workdir.exists()


# ----------------------------------------------------------------------------------------------
# The local launcher, on stand-in commands.


def _stand_in(tmp_path, name: str, code: str, *, num_train_steps: int = 5) -> sweep.Run:
    """A run whose command is a short Python program `code` (run in its workdir)."""
    workdir = str(tmp_path / name)
    return sweep.Run(name=name, entry={}, config_flag="c.py", overrides={}, changes={},
                     workdir=workdir, command=(sys.executable, "-c", code),
                     num_train_steps=num_train_steps, best_metric="loss", best_mode="min")


def test_local_launcher_pins_workers_skips_finished_and_reports_failures(tmp_path, capsys):
    report = ("import os, sys; open({out!r}, 'w').write("
              "repr((sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS']))); "
              "os.makedirs(os.path.join({workdir!r}, 'checkpoints', '5'))")  # trained to the end
    ok = [_stand_in(tmp_path, f"ok{i}", report.format(out=str(tmp_path / f"ok{i}.txt"),
                                                      workdir=str(tmp_path / f"ok{i}")))
          for i in range(2)]
    failing = _stand_in(tmp_path, "bad", "import sys; print('boom'); sys.exit(3)")
    finished = _stand_in(tmp_path, "finished", "raise SystemExit(9)")
    os.makedirs(os.path.join(finished.workdir, "checkpoints", "5"))
    codes = sweep.run_local([finished, ok[0], failing, ok[1]], parallel=2, poll_s=0.05)
    assert codes == {"ok0": 0, "bad": 3, "ok1": 0}
    out = capsys.readouterr().out
    assert "skip finished: finished" in out
    assert f"FAILED bad (exit code 3); its log: {failing.workdir}/train.log" in out
    assert "boom" in open(os.path.join(failing.workdir, "train.log")).read()
    assert "sweep: 2 done, 0 running, 1 failed, 0 waiting" in out
    cores = sorted(os.sched_getaffinity(0))
    shares = sweep.core_shares(cores, 2)
    seen = [eval(open(tmp_path / f"ok{i}.txt").read()) for i in range(2)]
    for (affinity, threads) in seen:
        assert tuple(affinity) in shares and threads == str(len(affinity))
    assert sweep.core_shares([0, 1, 2, 3, 4], 2) == [(0, 1, 2), (3, 4)]
    assert sweep.core_shares([0, 1], 3) == [(0,), (1,), (0,)]


TRAIN_THEN_TEST = """
import json, os, sys
workdir = sys.argv[1]
if '--mode=eval' in sys.argv:
    assert os.path.isdir(os.path.join(workdir, 'checkpoints', '5')), 'evaluated before trained'
    split = sys.argv[-1].removeprefix('--split=')
    json.dump({'checkpoint': 'best', 'step': 5, 'split': split, 'loss': float(sys.argv[2])},
              open(os.path.join(workdir, f'eval_{split}.json'), 'w'))
elif sys.argv[2] != 'stop':  # 'stop': end early and normally, as a trainer sent SIGTERM does
    os.makedirs(os.path.join(workdir, 'checkpoints', '5'))
"""


def test_test_split_evaluates_each_run_after_training_and_only_once(tmp_path, capsys):
    runs = [dataclasses.replace(_stand_in(tmp_path, f"r{i}", ""), entry={"seed": i},
                                test_split="test",
                                command=(sys.executable, "-c", TRAIN_THEN_TEST,
                                         str(tmp_path / f"r{i}"), str(loss)))
            for i, loss in enumerate([2.0, 1.0, 4.0])]
    os.makedirs(os.path.join(runs[2].workdir, "checkpoints", "5"))  # trained, not yet tested
    assert [sweep.status(r) for r in runs] == ["new", "new", "trained, test pending"]
    assert sweep.commands_left(runs[0]) == [runs[0].command, runs[0].test_command]
    assert sweep.commands_left(runs[2]) == [runs[2].test_command]
    assert runs[0].test_command[-2:] == ("--mode=eval", "--split=test")
    assert sweep.run_local(runs, parallel=2, poll_s=0.05) == {"r0": 0, "r1": 0, "r2": 0}
    assert capsys.readouterr().out.count("done r") == 3
    logs = [open(os.path.join(r.workdir, "train.log")).read() for r in runs]
    assert [log.count("\n=== ") for log in logs] == [2, 2, 1]  # train, then test; r2 only test
    assert all(log.rstrip().endswith("--mode=eval --split=test") for log in logs)
    assert [sweep.status(r) for r in runs] == ["finished"] * 3
    assert sweep.run_local(runs, parallel=2, poll_s=0.05) == {}  # nothing left to do

    # A trainer that ends normally before its last step is reported, and not tested.
    stopped = dataclasses.replace(runs[0], name="stopped", workdir=str(tmp_path / "stopped"),
                                  command=(sys.executable, "-c", TRAIN_THEN_TEST,
                                           str(tmp_path / "stopped"), "stop"))
    capsys.readouterr()
    assert sweep.run_local([stopped], parallel=1, poll_s=0.05) == {"stopped": 1}
    assert "STOPPED stopped at new: its trainer ended before its last step" in (
        capsys.readouterr().out)
    assert open(os.path.join(stopped.workdir, "train.log")).read().count("\n=== ") == 1
    rows = sweep.summary_rows(runs, "loss", "min")
    assert [(r["run"], r["test loss"]) for r in rows] == [("r0", 2.0), ("r1", 1.0), ("r2", 4.0)]
    groups = sweep.seed_groups(rows, "loss", "min")
    assert groups[0]["test loss mean"] == pytest.approx(7 / 3)
    assert groups[0]["test loss std"] == pytest.approx(1.5275, abs=1e-4)


STOPPABLE = """
import os, signal, sys, time
def stop(signum, frame):
    open(sys.argv[1] + '.stopped', 'w').write(str(signum))
    sys.exit(1)
signal.signal(signal.SIGTERM, stop)
open(sys.argv[1] + '.started', 'w').close()
time.sleep(60)
"""


def test_stopping_the_sweep_stops_each_trainer_with_one_sigterm(tmp_path):
    runs = [dataclasses.replace(_stand_in(tmp_path, f"r{i}", STOPPABLE),
                                command=(sys.executable, "-c", STOPPABLE, str(tmp_path / f"r{i}")))
            for i in range(2)]
    sweep.save_runs(str(tmp_path), runs)
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import sys; from attnx import sweep; "
         "sweep.run_local(sweep.load_runs(sys.argv[1]), parallel=2, poll_s=0.05)", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = [tmp_path / f"r{i}.started" for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    assert "stopping 2 running run(s); re-run the sweep command to resume them" in out
    for i in range(2):
        assert (tmp_path / f"r{i}.stopped").read_text() == str(int(signal.SIGTERM))


# ----------------------------------------------------------------------------------------------
# Real sweeps of tiny language models.

TINY = dict(num_train_steps=6, eval_every=3, checkpoint_every=3, log_every=3, eval_batches=1,
            num_samples=0, **{"data.seq_len": 32, "model.max_len": 32, "model.num_layers": 1,
                              "model.d_model": 32, "model.d_ff": 64})
LR_RUNS = ["optimizer.learning_rate=0.001", "optimizer.learning_rate=0.003"]
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per run


def _sweep_command(data_dir, workdir, axis, *extra):
    return [sys.executable, "-m", "attnx.sweep", f"--config={LM}:smoke", f"--workdir={workdir}",
            "--noconfig_sweep", f"--sweep={axis}", "--test_split=test", *extra,
            *(f"--config.{k}={v}" for k, v in {**TINY, "data.data_dir": data_dir}.items())]


def _wait_for(paths, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(p) for p in paths):
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def lr_sweep(data_dir, tmp_path_factory):
    """A two-run sweep killed (SIGTERM) once its first run has finished and its second started,
    then re-run to the end: (workdir, the killed sweep's output, the re-run's output)."""
    workdir = str(tmp_path_factory.mktemp("lr") / "sweep")
    command = _sweep_command(data_dir, workdir, "optimizer.learning_rate=1e-3,3e-3")
    killed = subprocess.Popen(command + ["--parallel=1"], cwd=REPO, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for([os.path.join(workdir, LR_RUNS[0], "checkpoints", "6"),
               os.path.join(workdir, LR_RUNS[1], "train.log")])
    killed.send_signal(signal.SIGTERM)
    killed_out, _ = killed.communicate(timeout=120)
    assert killed.returncode == 130, killed_out
    again = subprocess.run(command + ["--parallel=2"], cwd=REPO, env=ENV, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    return workdir, killed_out, again.stdout


def test_killed_sweep_reruns_only_its_unfinished_run(lr_sweep):
    workdir, killed_out, out = lr_sweep
    assert f"done {LR_RUNS[0]} in" in killed_out
    assert "stopping 1 running run(s); re-run the sweep command to resume them" in killed_out
    assert f"skip {LR_RUNS[0]}: finished" in out and f"start {LR_RUNS[0]}" not in out
    assert f"start {LR_RUNS[1]} on cores" in out and f"done {LR_RUNS[1]} in" in out
    assert "sweep: 1 done, 0 running, 0 failed, 0 waiting" in out
    log = open(os.path.join(workdir, LR_RUNS[0], "train.log")).read()
    assert log.count("\n=== ") == 2  # its trainer was started once, then its test evaluation
    assert log.count("--mode=eval --split=test\n") == 1
    for name in LR_RUNS:
        assert sorted(os.listdir(os.path.join(workdir, name, "checkpoints"))) == ["3", "6"]


def test_sweep_summary_table_csv_and_plots(lr_sweep, data_dir):
    workdir, _, out = lr_sweep
    assert "| run | optimizer.learning_rate | status | final bits_per_byte |" in out
    with open(os.path.join(workdir, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == LR_RUNS
    assert all(r["status"] == "finished" and r["best step"] in ("3", "6") for r in rows)
    best = [float(r["best bits_per_byte"]) for r in rows]
    assert best == sorted(best) and all(0 < b < 9 for b in best)
    for row in rows:  # the best validation checkpoint, evaluated on the test split
        tested = json.load(open(os.path.join(workdir, row["run"], "eval_test.json")))
        assert (tested["checkpoint"], str(tested["step"])) == ("best", row["best step"])
        assert float(row["test bits_per_byte"]) == pytest.approx(tested["bits_per_byte"])
        assert 0 < tested["bits_per_byte"] < 9
    assert open(os.path.join(workdir, "summary.md")).read().count("| optimizer.learning_rate=") == 2
    for png in ("summary.png", "curves.png"):
        with open(os.path.join(workdir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(workdir, "summary_seeds.csv"))  # no seed axis

    # Re-running starts nothing; a run that lost its last checkpoint resumes from the one before.
    again = subprocess.run(_sweep_command(data_dir, workdir, "optimizer.learning_rate=1e-3,3e-3"),
                           cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and "start" not in again.stdout
    shutil.rmtree(os.path.join(workdir, LR_RUNS[1], "checkpoints", "6"))
    runs = sweep.load_runs(workdir)
    assert [sweep.status(r) for r in runs] == ["finished", "step 3/6"]
    assert f"{LR_RUNS[1]}  [step 3/6]" in sweep._plan(runs)  # what --dry_run prints
    assert "| step 3/6 |" in sweep.write_summary(workdir, runs, "bits_per_byte", "min")


def _hparams_dashboard(logdir):
    """What TensorBoard's HParams plugin serves for `tensorboard --logdir logdir`: the
    experiment, and each session group's hparams and metric values by tag."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    events = plugin_event_multiplexer.EventMultiplexer()
    events.AddRunsFromDirectory(logdir)
    events.Reload()
    apps = hparams_plugin.HParamsPlugin(base_plugin.TBContext(
        logdir=logdir, multiplexer=events,
        data_provider=data_provider.MultiplexerDataProvider(events, logdir))).get_plugin_apps()

    def post(route, body):
        environ = werkzeug_test.EnvironBuilder(method="POST", data=json.dumps(body),
                                               content_type="application/json").get_environ()
        return json.loads(wrappers.Response.from_app(apps[route], environ).get_data())

    experiment = post("/experiment", {"experimentName": ""})
    groups = post("/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"]})["sessionGroups"]
    return experiment, {g["name"]: (g["hparams"], {m["name"]["tag"]: m["value"]
                                                   for m in g["metricValues"]})
                        for g in groups}


def test_hparams_dashboard_compares_every_run(lr_sweep):
    workdir, _, _ = lr_sweep
    experiment, groups = _hparams_dashboard(workdir)
    assert [h["name"] for h in experiment["hparamInfos"]] == ["optimizer.learning_rate"]
    assert [(m["name"]["tag"], m["name"].get("group", "")) for m in experiment["metricInfos"]] == [
        ("eval/bits_per_byte", ""), ("eval/loss", ""), ("train/loss", ""),
        ("best/eval/bits_per_byte", "sweep"), ("test/bits_per_byte", "sweep")]
    assert sorted(groups) == [f"{name}/tensorboard" for name in LR_RUNS]
    rows = {r["run"]: r for r in csv.DictReader(open(os.path.join(workdir, "summary.csv")))}
    for name, lr in zip(LR_RUNS, (1e-3, 3e-3)):
        hparams, metrics = groups[f"{name}/tensorboard"]
        assert hparams["optimizer.learning_rate"] == pytest.approx(lr)
        assert hparams["num_train_steps"] == 6  # each run's whole config
        assert set(metrics) == {"eval/bits_per_byte", "eval/loss", "train/loss",
                                "best/eval/bits_per_byte", "test/bits_per_byte"}
        for tag, column in (("best/eval/bits_per_byte", "best bits_per_byte"),
                            ("test/bits_per_byte", "test bits_per_byte")):
            assert metrics[tag] == pytest.approx(float(rows[name][column]), abs=1e-4)


def test_submitit_local_executor_runs_jobs_and_reports_the_failing_one(data_dir, tmp_path):
    workdir = str(tmp_path / "heads")
    result = subprocess.run(
        _sweep_command(data_dir, workdir, "model.num_heads=2,3", "--launcher=submitit_local",
                       "--slurm_cpus_per_task=1", "--slurm_timeout_min=10"),
        cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 1  # one run failed
    ok, bad = (os.path.join(workdir, f"model.num_heads={n}") for n in (2, 3))
    assert "done model.num_heads=2" in result.stdout
    assert "FAILED model.num_heads=3 (job " in result.stdout
    assert f"its log: {bad}/train.log" in result.stdout
    assert "model.num_heads=3 must divide model.d_model=32" in open(f"{bad}/train.log").read()
    assert sorted(os.listdir(os.path.join(ok, "checkpoints"))) == ["3", "6"]
    assert open(f"{ok}/train.log").read().count("(submitit job)") == 2  # train, then test
    assert json.load(open(f"{ok}/eval_test.json"))["split"] == "test"
    assert not os.path.exists(f"{bad}/eval_test.json")
    assert "| model.num_heads=2 | 2 | finished |" in result.stdout
    assert "1 run(s) failed: model.num_heads=3" in result.stderr


def test_seed_groups_give_mean_and_std_over_seeds():
    rows = [{"run": f"r{i}", "model": model, "seed": seed, "status": "finished",
             "final loss": final, "best loss": best, "best step": 6}
            for i, (model, seed, final, best) in enumerate([
                ("a", "0", 2.0, 1.0), ("a", "1", 4.0, 3.0), ("b", "0", 1.0, 0.5),
                ("b", "1", None, None)])]
    groups = sweep.seed_groups(rows, "loss", "min")
    assert groups == [
        {"runs": "model=b", "model": "b", "seeds": "0,1", "final loss mean": 1.0,
         "final loss std": None, "best loss mean": 0.5, "best loss std": None},
        {"runs": "model=a", "model": "a", "seeds": "0,1", "final loss mean": 3.0,
         "final loss std": pytest.approx(2 ** 0.5), "best loss mean": 2.0,
         "best loss std": pytest.approx(2 ** 0.5)}]
    assert sweep.seed_groups([{k: v for k, v in r.items() if k != "seed"} for r in rows],
                             "loss", "min") is None


def test_summary_metric_needs_a_mode_for_another_metric(tmp_path):
    run = _stand_in(tmp_path, "r", "pass")
    assert sweep.summary_metric([run], None, None) == ("loss", "min")
    assert sweep.summary_metric([run], "accuracy", "max") == ("accuracy", "max")
    with pytest.raises(ValueError, match="--metric_mode .* --metric=accuracy"):
        sweep.summary_metric([run], "accuracy", None)
