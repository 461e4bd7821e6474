"""Shared test helpers: load a config file by name, as `--config=configs/<name>:<arg>` would; load
a script of scripts/ as a module; a run's train-step ingredients."""

import importlib.util
import os
import sys

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
SCRIPT_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts")


def load_config(name: str, arg: str | None = None):
    """`get_config(arg)` of `configs/<name>.py`, unlocked for overrides."""
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def load_script(name: str):
    """`scripts/<name>.py` as module `name` (registered in sys.modules, where dataclasses and
    pickling look modules up)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPT_DIR, f"{name}.py"))
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_setup(config, info):
    """(graphdef, task, tx, schedule, fresh state) of `config` on data `info`, unjitted."""
    from attnx import optim
    from attnx import state as state_lib

    task = state_lib.check_data(config, info)
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state = state_lib.init(config, info, tx)
    return graphdef, task, tx, schedule, state


def fast_jit(fn, *args):
    """`jax.jit(fn)` compiled for `args` without XLA's backend optimizations: on CPU that halves
    the compile time, which dominates these tests."""
    import jax

    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})
