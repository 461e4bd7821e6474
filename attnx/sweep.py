r"""Sweeps: expand a config's grid into runs, run them locally in parallel or as submitit jobs
(SLURM), and compare them in one table, two plots and TensorBoard's HParams dashboard.

    python -m attnx.sweep --config=configs/lra_listops.py --workdir=runs/listops_sweep \
        [--parallel=2] [--launcher=local|slurm|submitit_local] [--dry_run] \
        [--sweep=KEY=V1,V2 ...] [--config.a.b=value ...]
    python -m attnx.sweep --summarize --workdir=runs/listops_sweep

What runs where. This process only expands and checks the grid, schedules runs and reads their
results; it never trains. Every run is an ordinary trainer command,

    python -m attnx.train --config=configs/x.py[:arg] --workdir=WORKDIR/<run name> --config.k=v ...

in a process of its own: with `--launcher=local`, a child of this process pinned to its share of
this machine's cores; with `--launcher=slurm`, a child of a submitit job (one per run, all in one
SLURM job array) on the cluster's nodes — one per task, so a job of several tasks is one
multi-host run (`attnx.distributed`); `--launcher=submitit_local` runs the same jobs here. So
everything a single run does (checkpoints, resume, TensorBoard, `--mode=eval`) holds for each run
of a sweep.

A sweep is a list of override dicts, one per run: `get_sweep(arg)` in the config file, or in a
sibling `configs/<name>_sweep.py` (`arg` is the config argument given with `--config`, or None),
times the `--sweep` axes of the command line. A key is either
- a config field path (`seed`, `optimizer.learning_rate`): passed as `--config.<key>=<value>`;
  the value must have the field's type (int, float, bool or str), or be a string of it; or
- `:` + the name of one of the config's arguments (`:attention`, `:model`): sets that argument in
  `--config=configs/x.py:<arg>` (added to, or replacing it in, the argument given with `--config`).
`axis`, `product`, `zipped` and `chain` below build the lists. Each run's directory is named from
its overrides (`WORKDIR/:attention=lsh,seed=1` is `WORKDIR/attention=lsh,seed=1`); everything
wrong with the grid (an unknown key, a value of the wrong type, an empty grid, two runs with the
same name or the same resolved config) is a ValueError before any run starts. With
`--test_split=test`, a run's best validation checkpoint is then evaluated on that split (the
trainer's `--mode=eval`, in the same slot). Re-running the sweep command skips finished runs (a
checkpoint at `num_train_steps`, and the test evaluation if asked for) and resumes the others.

`WORKDIR/sweep.json` records the runs; at the end of a local sweep, or with `--summarize`, each
run's final and best `eval/<metric>` are read from its TensorBoard events (and its test metric
from `eval_<split>.json`) into `summary.md` and `summary.csv` (runs that differ only in `seed`
also get mean ± std), `summary.png` and `curves.png` in WORKDIR, and TensorBoard's HParams
dashboard for `tensorboard --logdir WORKDIR`.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, Callable, Sequence, TextIO

import ml_collections

# Only light imports here: configs import this module for `axis`, `product`, ...
from attnx import config_lib

Entry = dict[str, Any]
ARG_PREFIX = ":"  # a key `:name` sets the config argument `name`
_VALUE_TYPES = (bool, int, float, str)  # what a `--config.k=v` override can carry
# Thread pools that would otherwise size themselves to the whole machine (XLA's CPU client sizes
# its pools from the process's affinity mask, which the local launcher sets).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------------------------
# Declaring a sweep: lists of override dicts.


def axis(key: str, values: Sequence[Any]) -> list[Entry]:
    """`[{key: v} for v in values]`: one run per value."""
    return [{key: value} for value in values]


def _merge(entries: Sequence[Entry]) -> Entry:
    merged: Entry = {}
    for entry in entries:
        shared = sorted(set(merged) & set(entry))
        if shared:
            raise ValueError(f"sweep key {shared[0]!r} is set by two combined axes")
        merged.update(entry)
    return merged


def product(*sweeps: Sequence[Entry]) -> list[Entry]:
    """Every combination of one entry from each sweep (the first varies slowest).

    Raises:
      ValueError: two sweeps set the same key.
    """
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipped(*sweeps: Sequence[Entry]) -> list[Entry]:
    """The i-th entries of the sweeps together: `zipped(axis('a', [1, 2]), axis('b', [3, 4]))`
    is two runs, a=1 b=3 and a=2 b=4.

    Raises:
      ValueError: sweeps of different lengths, or two that set the same key.
    """
    lengths = [len(s) for s in sweeps]
    if len(set(lengths)) > 1:
        raise ValueError(f"zipped sweeps must have equal lengths, got {lengths}")
    return [_merge(combo) for combo in zip(*sweeps)]


def chain(*sweeps: Sequence[Entry]) -> list[Entry]:
    """The runs of each sweep, one sweep after the other."""
    return [dict(entry) for sweep in sweeps for entry in sweep]


def parse_axis(text: str) -> list[Entry]:
    """`--sweep='optimizer.learning_rate=1e-3,3e-4'` -> one entry per value (values stay strings;
    `expand` converts them to the field's type).

    Raises:
      ValueError: no `=`, or no values.
    """
    key, has_value, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not has_value or not key.strip() or not items:
        raise ValueError(f"--sweep must be KEY=V1,V2,... (KEY a config field path or "
                         f":argument), got {text!r}")
    return axis(key.strip(), items)


# ----------------------------------------------------------------------------------------------
# From a config file to runs.


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its directory, the trainer command that runs it, and what the summary
    needs to know about its config."""
    name: str
    entry: Entry  # the sweep entry: its keys as declared, field values as the fields' types
    config_flag: str  # --config of the trainer: configs/x.py[:arg]
    overrides: dict[str, str]  # field path -> command-line value (shared ones, then the entry's)
    changes: dict[str, list[Any]]  # field path -> [shared value, this run's], where they differ
    workdir: str
    command: tuple[str, ...]
    num_train_steps: int
    best_metric: str
    best_mode: str
    test_split: str | None = None  # evaluate the best validation checkpoint on it when trained

    @property
    def test_command(self) -> tuple[str, ...]:
        """The trainer's `--mode=eval` command on `test_split` (writes `eval_<split>.json`)."""
        return (*self.command, "--mode=eval", f"--split={self.test_split}")


def load_module(path: str) -> ModuleType:
    """Import the Python file `path` (a config or a sweep file) as a fresh module."""
    if not os.path.isfile(path):
        raise ValueError(f"--config file {path!r} does not exist")
    name = "attnx_sweep_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_sweep(config_path: str, arg: str | None) -> list[Entry] | None:
    """`get_sweep(arg)` of the config file, or of its sibling `<name>_sweep.py`; None if neither
    defines one.

    Raises:
      ValueError: both define one.
    """
    sibling = os.path.splitext(config_path)[0] + "_sweep.py"
    found = [m for m in [load_module(config_path)] + ([load_module(sibling)]
                                                       if os.path.isfile(sibling) else [])
             if hasattr(m, "get_sweep")]
    if len(found) > 1:
        raise ValueError(f"both {config_path} and {sibling} define get_sweep(); keep one")
    return list(found[0].get_sweep(arg)) if found else None


def _format(value: Any) -> str:
    """A value as the command line and run names write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _merge_arg(base_arg: str, args: dict[str, Any]) -> str:
    """`smoke,attention=dense` with `{'attention': 'lsh'}` -> `smoke,attention=lsh`."""
    items = [item.strip() for item in base_arg.split(",") if item.strip()]
    keys = [item.partition("=")[0] for item in items]
    for key, value in args.items():
        text = _format(value)
        if "," in text:
            raise ValueError(f"config argument {key!r}: value {text!r} cannot contain ','")
        item = key if value is True else f"{key}={text}"
        if key in keys:
            items[keys.index(key)] = item
        else:
            items.append(item)
            keys.append(key)
    return ",".join(items)


def _field_parent(config: ml_collections.ConfigDict, key: str):
    parent = config
    for part in key.split(".")[:-1]:
        parent = parent[part]
    return parent, key.split(".")[-1]


def _typed(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> Any:
    """`value` as the type of field `key` (converted if it is a string from the command line).

    Raises:
      ValueError: `key` is not a field (naming the nearest fields), or `value` does not fit it.
    """
    fields = config_lib.flatten(config)
    if key not in fields:
        near = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
        raise ValueError(f"{where}: {key!r} is not a field of the config"
                         + (f"; nearest: {', '.join(near)}" if near else "")
                         + f" (a key {ARG_PREFIX}name sets the config argument name)")
    parent, leaf = _field_parent(config, key)
    field_type = parent.get_type(leaf)
    if field_type not in _VALUE_TYPES:
        raise ValueError(f"{where}: field {key!r} has type {field_type.__name__}; a sweep can "
                         f"set only {', '.join(t.__name__ for t in _VALUE_TYPES)} fields")
    if isinstance(value, str) and field_type is not str:
        try:
            if field_type is bool:
                value = {"true": True, "false": False}[value.lower()]
            else:
                value = field_type(value)
        except (KeyError, ValueError):
            raise ValueError(f"{where}: {key}={value!r} is not a {field_type.__name__}") from None
    accepted = (int, float) if field_type is float else (field_type,)
    if not isinstance(value, accepted) or (field_type is not bool and isinstance(value, bool)):
        raise ValueError(f"{where}: {key}={value!r} is a {type(value).__name__}, the field "
                         f"is a {field_type.__name__}")
    return float(value) if field_type is float else value


def run_name(entry: Entry) -> str:
    """A stable, filesystem-safe directory name from the entry's keys and values, whatever their
    order: `attention=lsh,optimizer.learning_rate=0.0003` (long names end in a hash)."""
    if not entry:
        return "base"
    name = ",".join(f"{key.removeprefix(ARG_PREFIX)}={_format(entry[key])}"
                    for key in sorted(entry, key=lambda k: k.removeprefix(ARG_PREFIX)))
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)
    if len(safe) > 100:
        safe = safe[:91] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return safe


def _resolve(get_config, base_arg: str, entry: Entry, shared: dict[str, Any],
             where: str) -> tuple[str, ml_collections.ConfigDict, dict[str, Any]]:
    """(config argument, resolved config, field overrides as the fields' types) of one run."""
    args = {k.removeprefix(ARG_PREFIX): v for k, v in entry.items() if k.startswith(ARG_PREFIX)}
    fields = {**shared, **{k: v for k, v in entry.items() if not k.startswith(ARG_PREFIX)}}
    try:
        arg = _merge_arg(base_arg, args)
        config = get_config(arg or None)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    overrides = {}
    for key, value in fields.items():
        value = _typed(config, key, value, where)
        parent, leaf = _field_parent(config, key)
        parent[leaf] = value
        overrides[key] = value
    return arg, config, overrides


def expand(config_flag: str, entries: Sequence[Entry], *, workdir: str,
           shared: dict[str, Any] | None = None, python: str = sys.executable,
           test_split: str | None = None) -> list[Run]:
    """The runs of `entries` on `config_flag` (`configs/x.py[:arg]`), each in `workdir/<name>`,
    with the field overrides `shared` (`--config.k=v` of the sweep command) applied to all; with
    `test_split`, each run's best validation checkpoint is then evaluated on that split.

    Raises:
      ValueError, before anything runs: an empty grid; an entry that is not a dict; an unknown
      config argument or field; a value of the wrong type; two runs with the same name or the
      same resolved config.
    """
    if not entries:
        raise ValueError("the sweep is empty: get_sweep() and --sweep give no runs")
    path, _, base_arg = config_flag.partition(":")
    get_config = load_module(path).get_config
    shared = dict(shared or {})
    _, base, _ = _resolve(get_config, base_arg, {}, shared, "--config")
    base_fields = config_lib.flatten(base)
    runs: list[Run] = []
    names: dict[str, int] = {}
    resolved: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"sweep entry {index} {entry!r}"
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ValueError(f"{where}: an entry must be a dict with string keys")
        arg, config, overrides = _resolve(get_config, base_arg, entry, shared, where)
        entry = {k: v if k.startswith(ARG_PREFIX) else overrides[k] for k, v in entry.items()}
        name = run_name(entry)
        if name in names:
            raise ValueError(f"{where} and sweep entry {names[name]} have the same run name "
                             f"{name!r}")
        fields = config_lib.flatten(config)
        fingerprint = json.dumps(fields, sort_keys=True, default=str)
        if fingerprint in resolved:
            raise ValueError(f"{where} resolves to the same config as sweep entry "
                             f"{resolved[fingerprint]} {entries[resolved[fingerprint]]!r}")
        names[name], resolved[fingerprint] = index, index
        changes = {k: [base_fields.get(k, "(absent)"), fields.get(k, "(absent)")]
                   for k in sorted(set(base_fields) | set(fields))
                   if base_fields.get(k, "(absent)") != fields.get(k, "(absent)")}
        run_flag = f"{path}:{arg}" if arg else path
        run_dir = os.path.join(workdir, name)
        overrides = {k: _format(v) for k, v in overrides.items()}
        command = (python, "-m", "attnx.train", f"--config={run_flag}", f"--workdir={run_dir}",
                   *(f"--config.{k}={v}" for k, v in overrides.items()))
        runs.append(Run(name=name, entry=entry, config_flag=run_flag, overrides=overrides,
                        changes=changes, workdir=run_dir, command=command,
                        num_train_steps=config.num_train_steps, best_metric=config.best_metric,
                        best_mode=config.best_mode, test_split=test_split))
    return runs


def save_runs(workdir: str, runs: Sequence[Run]) -> str:
    """Write `workdir/sweep.json` (what `--summarize` reads); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "sweep.json")
    with open(path, "w") as f:
        json.dump({"runs": [dataclasses.asdict(r) for r in runs]}, f, indent=2, default=str)
    return path


def load_runs(workdir: str) -> list[Run]:
    """The runs recorded in `workdir/sweep.json`."""
    path = os.path.join(workdir, "sweep.json")
    if not os.path.isfile(path):
        raise ValueError(f"--workdir {workdir!r} holds no sweep.json: not a sweep directory")
    with open(path) as f:
        return [Run(**{**r, "command": tuple(r["command"])}) for r in json.load(f)["runs"]]


# ----------------------------------------------------------------------------------------------
# A run's state and metrics, read from its directory.


def trained_steps(workdir: str) -> int | None:
    """The step of the newest complete checkpoint in `workdir` (Orbax only names a checkpoint
    by its step once it is whole), or None."""
    directory = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(
        directory) else []
    return max(steps) if steps else None


def is_trained(run: Run) -> bool:
    steps = trained_steps(run.workdir)
    return steps is not None and steps >= run.num_train_steps


def test_result(run: Run) -> dict[str, Any] | None:
    """The run's `eval_<test_split>.json` (the checkpoint, its step and the metrics), or None
    (no test split, or not evaluated yet)."""
    if run.test_split is None:
        return None
    path = os.path.join(run.workdir, f"eval_{run.test_split}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def commands_left(run: Run) -> list[tuple[str, ...]]:
    """What the run still has to do: its trainer command (train or resume) unless trained, then
    its test evaluation unless done (or no test split)."""
    left = [] if is_trained(run) else [run.command]
    if run.test_split is not None and (left or test_result(run) is None):
        left.append(run.test_command)
    return left


def is_finished(run: Run) -> bool:
    return not commands_left(run)


def status(run: Run) -> str:
    """'finished', 'trained, <split> pending', 'step k/n' (resumes from k) or 'new'."""
    steps = trained_steps(run.workdir)
    if steps is None:
        return "new"
    if steps < run.num_train_steps:
        return f"step {steps}/{run.num_train_steps}"
    return "finished" if is_finished(run) else f"trained, {run.test_split} pending"


def read_scalars(workdir: str, tag: str) -> dict[int, float]:
    """Scalar `tag` by step from the run's TensorBoard events ({} if none yet); a resumed run's
    repeated steps keep the later value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = os.path.join(workdir, "tensorboard")
    if not os.path.isdir(logdir):
        return {}
    events = EventAccumulator(logdir, size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return {}
    return {e.step: e.value for e in events.Scalars(tag)}


def read_metric(workdir: str, metric: str, mode: str) -> dict[str, float] | None:
    """Final and best `eval/<metric>` (and their steps) of the run, or None if it has not
    evaluated yet."""
    values = read_scalars(workdir, f"eval/{metric}")
    if not values:
        return None
    pick = min if mode == "min" else max
    best_step = pick(sorted(values), key=lambda s: values[s])
    final_step = max(values)
    return {"final": values[final_step], "final_step": final_step,
            "best": values[best_step], "best_step": best_step}


# ----------------------------------------------------------------------------------------------
# The summary: tables, plots and the HParams dashboard.


def summary_rows(runs: Sequence[Run], metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per run, best first: its swept values, status and final / best `metric`."""
    keys = list(dict.fromkeys(k for run in runs for k in run.entry))
    rows = []
    for run in runs:
        found = read_metric(run.workdir, metric, mode)
        row = {"run": run.name}
        row.update({k.removeprefix(ARG_PREFIX): _format(run.entry[k]) if k in run.entry else ""
                    for k in keys})
        row.update({"status": status(run),
                    f"final {metric}": None if found is None else found["final"],
                    f"best {metric}": None if found is None else found["best"],
                    "best step": None if found is None else found["best_step"]})
        if run.test_split is not None:
            tested = test_result(run)
            row[f"{run.test_split} {metric}"] = None if tested is None else tested.get(metric)
        rows.append(row)
    return _sorted(rows, f"best {metric}", mode)


def _metric_columns(row: dict[str, Any], metric: str) -> list[str]:
    """The columns of `row` that hold `metric`: final, best, and the test split's if any."""
    return [k for k in row if k.endswith(f" {metric}")]


def _sorted(rows: list[dict[str, Any]], column: str, mode: str) -> list[dict[str, Any]]:
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda r: (r[column] is None, sign * (r[column] or 0.0)))


def seed_groups(rows: Sequence[dict[str, Any]], metric: str,
                mode: str) -> list[dict[str, Any]] | None:
    """With `seed` among the swept keys: one row per group of runs that differ only in their
    seed, with its seeds and the mean and standard deviation (n - 1) over them of the final and
    best `metric` (and the test split's, if evaluated), best mean first; otherwise None."""
    if "seed" not in rows[0]:
        return None
    keys = list(rows[0])[1:list(rows[0]).index("status")]
    others = [k for k in keys if k != "seed"]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
    table = []
    for values, members in groups.items():
        out = {"runs": ",".join(f"{k}={v}" for k, v in zip(others, values) if v) or "all"}
        out.update(zip(others, values))
        out["seeds"] = ",".join(r["seed"] for r in members)
        for column in _metric_columns(rows[0], metric):
            found = [r[column] for r in members if r[column] is not None]
            mean = sum(found) / len(found) if found else None
            std = ((sum((v - mean) ** 2 for v in found) / (len(found) - 1)) ** 0.5
                   if len(found) > 1 else None)
            out[f"{column} mean"], out[f"{column} std"] = mean, std
        table.append(out)
    return _sorted(table, f"best {metric} mean", mode)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def summary_metric(runs: Sequence[Run], metric: str | None,
                   mode: str | None) -> tuple[str, str]:
    """(metric, mode): by default the runs' `best_metric` and `best_mode`.

    Raises:
      ValueError: `metric` is not the runs' best_metric and `mode` is not given.
    """
    best_metric, best_mode = runs[0].best_metric, runs[0].best_mode
    metric = metric or best_metric
    if mode is None:
        if metric != best_metric:
            raise ValueError(f"--metric_mode (min or max) is needed for --metric={metric}, "
                             f"which is not the runs' best_metric ({best_metric})")
        mode = best_mode
    return metric, mode


def plot_metric(path: str, rows: Sequence[dict[str, Any]], groups: Sequence[dict[str, Any]] | None,
                metric: str, mode: str) -> None:
    """A bar per run (or per seed group, with its standard deviation) of the best validation
    `metric`, and beside it the test split's where the runs were evaluated on one."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table, suffix = (groups, " mean") if groups else (rows, "")
    labels = [t["runs"] if groups else t["run"] for t in table]
    columns = [c for c in _metric_columns(rows[0], metric) if not c.startswith("final ")]
    height = 0.8 / len(columns)
    figure, ax = plt.subplots(figsize=(8, 0.5 * len(labels) * len(columns) + 1.5))
    for i, column in enumerate(columns):
        values = [float("nan") if t[column + suffix] is None else t[column + suffix]
                  for t in table]
        errors = [t[f"{column} std"] or 0.0 for t in table] if groups else None
        offset = (i - (len(columns) - 1) / 2) * height
        ax.barh([y + offset for y in range(len(labels))], values, height, xerr=errors,
                capsize=3, label=column.replace("best ", "best validation "))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # best first, as in the table
    if len(columns) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)"
                  + (", mean ± std over seeds" if groups else ""))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_curves(path: str, runs: Sequence[Run], metric: str) -> None:
    """`train/loss` and `eval/<metric>` against the step, one line per run, on one figure."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, tag in zip(axes, ("train/loss", f"eval/{metric}")):
        for run in runs:
            values = read_scalars(run.workdir, tag)
            if values:
                steps = sorted(values)
                ax.plot(steps, [values[s] for s in steps], marker=".", label=run.name)
        ax.set_xlabel("step")
        ax.set_title(tag)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_hparams(workdir: str, runs: Sequence[Run], metric: str, mode: str) -> None:
    """Declare the HParams dashboard of `tensorboard --logdir WORKDIR`: its columns are the
    config fields the runs change, its metrics final `eval/<metric>`, `eval/loss` and
    `train/loss`, and the best `eval/<metric>` and, with a test split, `<split>/<metric>` of
    the checkpoint evaluated on it (written to each run's `tensorboard/sweep/`, in the metric
    group `sweep`) — each run's own HParams (its whole config) give the values."""
    from attnx.summary import SummaryWriter

    changed: dict[str, Any] = {}
    for run in runs:
        changed.update({k: new for k, (_, new) in run.changes.items() if k not in changed})
    tags = list(dict.fromkeys([f"eval/{metric}", "eval/loss", "train/loss"]))
    for run in runs:
        logdir = os.path.join(run.workdir, "tensorboard", "sweep")
        shutil.rmtree(logdir, ignore_errors=True)
        found, tested = read_metric(run.workdir, metric, mode), test_result(run)
        if found is not None or tested is not None:
            writer = SummaryWriter(logdir, enabled=True)
            if found is not None:
                writer.scalars(found["best_step"], {f"best/eval/{metric}": found["best"]})
            if tested is not None and metric in tested:
                writer.scalars(tested["step"], {f"{run.test_split}/{metric}": tested[metric]})
            writer.close()
    logdir = os.path.join(workdir, "hparams")
    shutil.rmtree(logdir, ignore_errors=True)
    writer = SummaryWriter(logdir, enabled=True)
    splits = dict.fromkeys(run.test_split for run in runs if run.test_split is not None)
    writer.experiment(changed, [(tag, "") for tag in tags] + [(f"best/eval/{metric}", "sweep")]
                      + [(f"{split}/{metric}", "sweep") for split in splits])
    writer.close()


def write_summary(workdir: str, runs: Sequence[Run], metric: str, mode: str) -> str:
    """Write the summary of `runs` next to `workdir/sweep.json`: `summary.md` and `summary.csv`
    (with seeds swept, also the seed groups' table, `summary_seeds.csv`), `summary.png` (the
    best metric of each run or group), `curves.png` (every run's learning curves) and the
    HParams dashboard (`write_hparams`). Returns the Markdown tables."""
    rows = summary_rows(runs, metric, mode)
    groups = seed_groups(rows, metric, mode)
    tables = to_markdown(rows)
    if groups:
        tables += f"\nMean and standard deviation over seeds:\n\n{to_markdown(groups)}"
        with open(os.path.join(workdir, "summary_seeds.csv"), "w", newline="") as f:
            f.write(to_csv(groups))
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(f"Runs of {workdir}, best `eval/{metric}` ({mode}) first.\n\n{tables}")
    with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
        f.write(to_csv(rows))
    plot_metric(os.path.join(workdir, "summary.png"), rows, groups, metric, mode)
    plot_curves(os.path.join(workdir, "curves.png"), runs, metric)
    write_hparams(workdir, runs, metric, mode)
    return tables


# ----------------------------------------------------------------------------------------------
# The local launcher: worker processes on this machine, each pinned to its share of the cores.


def core_shares(cores: Sequence[int], parallel: int) -> list[tuple[int, ...]]:
    """Split `cores` into `parallel` contiguous shares (worker i gets share i); with more workers
    than cores, workers share cores round-robin."""
    cores = sorted(cores)
    if parallel >= len(cores):
        return [(cores[i % len(cores)],) for i in range(parallel)]
    size, extra = divmod(len(cores), parallel)
    shares, start = [], 0
    for i in range(parallel):
        end = start + size + (i < extra)
        shares.append(tuple(cores[start:end]))
        start = end
    return shares


def _available_cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _start(run: Run, command: tuple[str, ...],
           cores: tuple[int, ...]) -> tuple[subprocess.Popen, TextIO]:
    """Start one of the run's commands, pinned to `cores`, appending to `<workdir>/train.log`.

    In a session of its own, so that a Ctrl-C in the terminal reaches only the sweep, which then
    sends each trainer exactly one SIGTERM (a second signal would cut short its final save)."""
    os.makedirs(run.workdir, exist_ok=True)
    log = open(os.path.join(run.workdir, "train.log"), "a")
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} on cores {list(cores)}: "
              f"{shlex.join(command)}\n")
    log.flush()
    env = dict(os.environ, **{var: str(len(cores)) for var in _THREAD_VARS})
    pin = (lambda: os.sched_setaffinity(0, cores)) if hasattr(os, "sched_setaffinity") else None
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, preexec_fn=pin,
                               start_new_session=True)
    return process, log


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _unfinished(runs: Sequence[Run], say: Callable[[str], None]) -> list[Run]:
    """The runs not yet finished, in order; says which finished ones are skipped."""
    todo = []
    for run in runs:
        if is_finished(run):
            say(f"skip {run.name}: finished")
        else:
            todo.append(run)
    return todo


class _Stop(Exception):
    """SIGTERM to the sweep: stop it like a Ctrl-C."""


def run_local(runs: Sequence[Run], *, parallel: int, out: TextIO | None = None,
              poll_s: float = 0.2) -> dict[str, int]:
    """Run the unfinished `runs` here, at most `parallel` at a time, each pinned to its share of
    the cores (`core_shares`) with its thread pools sized to it; finished runs are skipped. A
    run's commands (`commands_left`: training, then its test evaluation) go one after the other
    on the same cores.

    Prints a line when a run starts, ends or fails (with its log path) and a progress line
    (done / running / failed / waiting, ETA); a failed run does not stop the others. Ctrl-C or
    SIGTERM stops the running trainers with SIGTERM (each keeps its last complete checkpoint)
    and re-raises. A trainer that ends normally before its last step (stopped by a signal from
    outside the sweep: it checkpoints and exits 0) is reported as stopped, with exit code 1.
    Prints to `out` (default stdout). Returns each launched run's exit code by name.
    """
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    say = lambda message: print(message, file=out or sys.stdout, flush=True)  # noqa: E731
    waiting = _unfinished(runs, say)
    shares = core_shares(_available_cores(), parallel)
    free = list(range(parallel))
    # name -> (run, its process, its log, its slot, its start time, the command it runs)
    running: dict[str, tuple[Run, subprocess.Popen, TextIO, int, float, tuple[str, ...]]] = {}
    codes: dict[str, int] = {}
    durations: list[float] = []

    def progress() -> None:
        left = len(waiting) + len(running)
        eta = (_clock(sum(durations) / len(durations) * left / parallel) if durations
               else "?")
        failed = sum(1 for c in codes.values() if c)
        say(f"sweep: {len(codes) - failed} done, {len(running)} running, {failed} failed, "
            f"{len(waiting)} waiting | ETA {eta}")

    # The handler only records the signal; the loop raises. (An exception raised inside a signal
    # handler surfaces wherever the main thread is, and is lost if that is a finalizer.)
    signals: list[int] = []
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, _: signals.append(signum))
    try:
        while waiting or running:
            if signals:
                raise _Stop(f"received signal {signals[0]}")
            while waiting and free:
                run, slot = waiting.pop(0), free.pop(0)
                command = commands_left(run)[0]
                process, log = _start(run, command, shares[slot])
                running[run.name] = (run, process, log, slot, time.monotonic(), command)
                say(f"start {run.name} on cores {','.join(map(str, shares[slot]))} "
                    f"(log {log.name})")
                progress()
            for name, (run, process, log, slot, start, command) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                left = commands_left(run) if code == 0 else []
                if left and left[0] != command:  # trained: now its test evaluation
                    process, log = _start(run, left[0], shares[slot])
                    running[name] = (run, process, log, slot, start, left[0])
                    continue
                del running[name]
                free.append(slot)
                codes[name] = 1 if left else code
                if left:
                    say(f"STOPPED {name} at {status(run)}: its trainer ended before its last "
                        f"step (a signal from outside the sweep?); re-run the sweep command to "
                        f"resume it; its log: {log.name}")
                elif code:
                    say(f"FAILED {name} (exit code {code}); its log: {log.name}")
                else:
                    durations.append(time.monotonic() - start)
                    say(f"done {name} in {_clock(durations[-1])}")
                progress()
            time.sleep(poll_s)
    except (KeyboardInterrupt, _Stop):
        say(f"stopping {len(running)} running run(s); re-run the sweep command to resume them")
        for _, process, _, _, _, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for _, process, log, _, _, _ in running.values():
            process.wait()
            log.close()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return codes


# ----------------------------------------------------------------------------------------------
# The submitit launchers: one job per run, on SLURM (or on this machine, to try it).


class TrainerJob:
    """What a submitit job runs: the run's commands left (`commands_left`: its trainer command,
    then its test evaluation), in `cwd`, appending to its `train.log`, with its thread pools
    sized to `threads` cores.

    submitit calls `checkpoint` (on task 0) when SLURM signals the end of the time limit or a
    preemption: the trainer gets SIGTERM, keeps its last complete checkpoint, and the job is
    requeued with a fresh `TrainerJob`, which resumes it. The trainer ignores SLURM's own signal
    (USR2), which only submitit acts on."""

    def __init__(self, run: Run, cwd: str, threads: int):
        self.run, self.cwd, self.threads = run, cwd, threads
        self._process: subprocess.Popen | None = None

    def __call__(self) -> None:
        """Raises:
          RuntimeError: a command failed (naming its exit code and log), or the trainer ended
            before its last step without submitit's requeue (a signal from elsewhere)."""
        os.makedirs(self.run.workdir, exist_ok=True)
        log_path = os.path.join(self.run.workdir, "train.log")
        env = dict(os.environ, **{var: str(self.threads) for var in _THREAD_VARS})
        while left := commands_left(self.run):
            command = left[0]
            with open(log_path, "a") as log:
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} (submitit job): "
                          f"{shlex.join(command)}\n")
                log.flush()
                self._process = subprocess.Popen(
                    command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
                # poll, not wait(): `checkpoint` may run (in a signal handler) meanwhile.
                while (code := self._process.poll()) is None:
                    time.sleep(1.0)
            if code:
                raise RuntimeError(f"run {self.run.name} failed (exit code {code}); its log: "
                                   f"{log_path}")
            if commands_left(self.run)[:1] == [command]:
                raise RuntimeError(f"run {self.run.name} stopped at {status(self.run)}: its "
                                   f"trainer ended before its last step; its log: {log_path}")

    def checkpoint(self) -> Any:
        import submitit

        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while self._process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
        return submitit.helpers.DelayedSubmission(TrainerJob(self.run, self.cwd, self.threads))


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each run's job asks for (`--slurm_*` flags)."""
    timeout_min: int = 240
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 4
    gpus_per_node: int = 0
    partition: str | None = None
    setup: tuple[str, ...] = ()


def make_executor(launcher: str, folder: str, resources: Resources, *, name: str,
                  parallel: int) -> Any:
    """A submitit executor: `slurm` (sbatch job arrays, at most `parallel` jobs running) or
    `submitit_local` (the same jobs as processes here).

    Raises:
      ValueError: another launcher.
    """
    import submitit

    clusters = {"slurm": "slurm", "submitit_local": "local"}
    if launcher not in clusters:
        raise ValueError(f"--launcher must be one of {', '.join(clusters)} for submitit, got "
                         f"{launcher!r}")
    executor = submitit.AutoExecutor(folder=folder, cluster=clusters[launcher])
    slurm = {"slurm_array_parallelism": parallel, "slurm_setup": list(resources.setup),
             **({"slurm_partition": resources.partition} if resources.partition else {})}
    executor.update_parameters(name=name, timeout_min=resources.timeout_min,
                               nodes=resources.nodes, tasks_per_node=resources.tasks_per_node,
                               cpus_per_task=resources.cpus_per_task,
                               gpus_per_node=resources.gpus_per_node, **slurm)
    return executor


def submit(runs: Sequence[Run], executor: Any, *, threads: int,
           out: TextIO | None = None) -> list[tuple[Run, Any]]:
    """Submit one job per unfinished run (one SLURM job array); returns (run, job) pairs."""
    say = lambda message: print(message, file=out or sys.stdout, flush=True)  # noqa: E731
    todo = _unfinished(runs, say)
    jobs = []
    if todo:
        with executor.batch():
            jobs = [executor.submit(TrainerJob(run, os.getcwd(), threads)) for run in todo]
    for run, job in zip(todo, jobs):
        say(f"submitted {run.name}: job {job.job_id} (submitit log {job.paths.stdout})")
    return list(zip(todo, jobs))


def wait_jobs(jobs: Sequence[tuple[Run, Any]], *, out: TextIO | None = None,
              poll_s: float = 1.0) -> dict[str, int]:
    """Wait for the jobs, printing each end or failure (with the run's log); returns each run's
    exit code by name (1 for a failed job)."""
    say = lambda message: print(message, file=out or sys.stdout, flush=True)  # noqa: E731
    codes: dict[str, int] = {}
    while len(codes) < len(jobs):
        for run, job in jobs:
            if run.name in codes or not job.done():
                continue
            try:
                job.result()
                codes[run.name] = 0
                say(f"done {run.name}")
            except Exception:  # submitit's FailedJobError, naming its own log
                codes[run.name] = 1
                say(f"FAILED {run.name} (job {job.job_id}); its log: "
                    f"{os.path.join(run.workdir, 'train.log')} (submitit's: {job.paths.stderr})")
        time.sleep(poll_s)
    return codes


# ----------------------------------------------------------------------------------------------
# The command line.


def _plan(runs: Sequence[Run]) -> str:
    """What --dry_run prints: each run's status, command and resolved differences."""
    lines = [f"{len(runs)} run(s):"]
    for run in runs:
        lines += [f"{run.name}  [{status(run)}]", f"  {shlex.join(run.command)}"]
        if run.test_split is not None:
            lines.append(f"  then {shlex.join(run.test_command)}")
        lines += [f"  {key}: {old!r} -> {new!r}" for key, (old, new) in run.changes.items()]
    return "\n".join(lines)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("config", None, "Config file, configs/x.py[:arg]; --config.a.b=v "
                        "overrides (after it) apply to every run.")
    flags.DEFINE_string("workdir", None, "Sweep directory; run i goes to WORKDIR/<its name> "
                        "(default runs/<config name>[_<arg>]_sweep).")
    flags.DEFINE_multi_string("sweep", [], "An axis KEY=V1,V2,... (KEY a config field path, or "
                              ":name for a config argument); axes and get_sweep() multiply.")
    flags.DEFINE_boolean("config_sweep", True, "Use the config's get_sweep() (or its "
                         "<name>_sweep.py sibling's); --noconfig_sweep: only the --sweep axes.")
    flags.DEFINE_enum("launcher", "local", ["local", "slurm", "submitit_local"],
                      "local: worker processes here; slurm: one submitit job per run (a job "
                      "array), submitted and left to run; submitit_local: the same jobs as "
                      "processes here, waited for.")
    flags.DEFINE_integer("parallel", 1, "Runs at once: local worker processes (each pinned to "
                         "its share of the cores), or the SLURM array's running-task limit.")
    flags.DEFINE_string("test_split", None, "After training, evaluate each run's best validation "
                        "checkpoint on this split (the trainer's --mode=eval, writing "
                        "eval_<split>.json); the summary adds its metric.")
    flags.DEFINE_boolean("dry_run", False, "Print each run's status, command and config "
                         "differences, and exit.")
    flags.DEFINE_boolean("summarize", False, "Only write and print the summary table of "
                         "--workdir's runs.")
    flags.DEFINE_string("metric", None, "Summary metric eval/<metric> (default: the runs' "
                        "best_metric).")
    flags.DEFINE_enum("metric_mode", None, ["min", "max"], "Whether lower or higher --metric is "
                      "better (default: the runs' best_mode).")
    flags.DEFINE_integer("slurm_timeout_min", 240, "submitit: time limit of each job, in "
                         "minutes (a run cut off resumes in its requeued job).")
    flags.DEFINE_integer("slurm_nodes", 1, "submitit: nodes of each run (several: one "
                         "multi-host run, jax.distributed detected).")
    flags.DEFINE_integer("slurm_tasks_per_node", 1, "submitit: trainer processes per node "
                         "(e.g. one per GPU).")
    flags.DEFINE_integer("slurm_cpus_per_task", 4, "submitit: CPU cores of each task.")
    flags.DEFINE_integer("slurm_gpus_per_node", 0, "submitit: GPUs of each node.")
    flags.DEFINE_string("slurm_partition", None, "submitit: SLURM partition.")
    flags.DEFINE_multi_string("slurm_setup", [], "submitit: a shell line each SLURM job runs "
                              "first, e.g. 'source .venv/bin/activate' (repeatable).")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parses the sweep's own flags; `--config.k=v` overrides pass through to main."""
    from absl import app, flags

    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    for a in overrides:
        if "=" not in a:
            raise app.UsageError(f"write config overrides as --config.KEY=VALUE, got {a!r}")
    return flags.FLAGS([a for a in argv if a not in overrides]) + overrides


def main(argv: list[str]) -> None:
    from absl import app, flags, logging

    from attnx.train import default_workdir

    logging.set_verbosity(logging.WARNING)  # keep TensorBoard's event reading quiet
    FLAGS = flags.FLAGS
    shared = dict(a.removeprefix("--config.").split("=", 1) for a in argv[1:]
                  if a.startswith("--config."))
    extra = [a for a in argv[1:] if not a.startswith("--config.")]
    if extra:
        raise app.UsageError(f"unexpected arguments: {' '.join(extra)}")
    if FLAGS.summarize:
        if not FLAGS.workdir:
            raise app.UsageError("--summarize needs --workdir (the sweep directory)")
        runs = load_runs(FLAGS.workdir)
        metric, mode = summary_metric(runs, FLAGS.metric, FLAGS.metric_mode)
        print(write_summary(FLAGS.workdir, runs, metric, mode), end="")
        return
    if not FLAGS.config:
        raise app.UsageError("--config is required (configs/x.py[:arg])")
    if FLAGS.parallel < 1:
        raise app.UsageError(f"--parallel must be >= 1, got {FLAGS.parallel}")
    workdir = FLAGS.workdir or default_workdir(FLAGS.config) + "_sweep"
    path, _, arg = FLAGS.config.partition(":")
    declared = config_sweep(path, arg or None) if FLAGS.config_sweep else None
    if declared is None and not FLAGS.sweep:
        raise app.UsageError(f"{path} declares no get_sweep() (nor does "
                             f"{os.path.splitext(path)[0]}_sweep.py): give --sweep=KEY=V1,V2")
    grid = product(*([declared] if declared is not None else []),
                   *(parse_axis(text) for text in FLAGS.sweep))
    runs = expand(FLAGS.config, grid, workdir=workdir, shared=shared,
                  test_split=FLAGS.test_split)
    if FLAGS.dry_run:
        print(_plan(runs))
        return
    save_runs(workdir, runs)
    metric, mode = summary_metric(runs, FLAGS.metric, FLAGS.metric_mode)
    if FLAGS.launcher != "local":
        resources = Resources(FLAGS.slurm_timeout_min, FLAGS.slurm_nodes,
                              FLAGS.slurm_tasks_per_node, FLAGS.slurm_cpus_per_task,
                              FLAGS.slurm_gpus_per_node, FLAGS.slurm_partition,
                              tuple(FLAGS.slurm_setup))
        executor = make_executor(FLAGS.launcher, os.path.join(workdir, "submitit"), resources,
                                 name=os.path.basename(os.path.normpath(workdir)),
                                 parallel=FLAGS.parallel)
        jobs = submit(runs, executor, threads=FLAGS.slurm_cpus_per_task)
        if FLAGS.launcher == "slurm":
            print(f"{len(jobs)} job(s) submitted; the summary, when they end: python -m "
                  f"attnx.sweep --summarize --workdir={workdir}")
            return
        codes = wait_jobs(jobs)
    else:
        try:
            codes = run_local(runs, parallel=FLAGS.parallel)
        except (KeyboardInterrupt, _Stop):
            sys.exit(130)  # run_local said what stopped and how to resume
    print(write_summary(workdir, runs, metric, mode), end="")
    failed = [run for run in runs if codes.get(run.name)]
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: " + ", ".join(
            f"{run.name} (log {os.path.join(run.workdir, 'train.log')})" for run in failed))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main, flags_parser=_parse_flags)
