r"""Generate text from a trained language model or seq2seq model.

    python -m attnx.sample --workdir=runs/transformer_lm --prompt="def main(" \
        [--num_tokens=200] [--temperature=0.8] [--top_k=40] [--seed=0]

The run's config is read from `WORKDIR/config.json` and the best (else the latest) checkpoint is
loaded. The run's task decides how (`attnx.tasks`, `complete`): a language model continues the
prompt (incrementally with a key/value cache where its mechanism has one, else by recomputing a
window of `data.seq_len` tokens), a seq2seq model decodes greedily from the encoded prompt.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from attnx import checkpoints, data, optim
from attnx import state as state_lib


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run directory was trained with; ValueError if it holds none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"--workdir={workdir!r} holds no config.json: is it a run directory?")
    with open(path) as fh:
        return ml_collections.ConfigDict(json.load(fh))


def load_run(config: ml_collections.ConfigDict, workdir: str):
    """(dataset, task, model) of the best (else latest) checkpoint of a run directory.

    Raises:
      ValueError: no checkpoint in `workdir`.
    """
    dataset = data.build(config.data, seed=config.seed)
    task = state_lib.check_data(config, dataset.info)
    tx, _ = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state_shape = state_lib.abstract_state(config, dataset.info, tx)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    manager = checkpoints.Manager(workdir)
    found = manager.restore_eval_state(state_shape, jax.tree.map(lambda _: device, state_shape))
    manager.close()
    if found is None:
        raise ValueError(f"no checkpoint in {workdir!r}")
    eval_state, which, step = found
    print(f"# {which} checkpoint, step {step}", flush=True)
    return dataset, task, state_lib.merge(graphdef, eval_state)


def main(argv) -> None:
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
    f = flags.FLAGS
    config = read_config(f.workdir)
    task = state_lib.model_task(config.model)
    if task.complete is None:
        raise ValueError(f"sampling needs an LM or seq2seq run; {f.workdir!r} trained {config.model.name!r}, a {task.name!r} model")
    dataset, task, model = load_run(config, f.workdir)
    print(task.complete(model, dataset.info, f.prompt, num_tokens=f.num_tokens,
                        temperature=f.temperature, top_k=f.top_k or None, seed=f.seed))


if __name__ == "__main__":
    from absl import flags

    from attnx import cli

    flags.DEFINE_string("workdir", None, "Run directory of a trained model.", required=True)
    flags.DEFINE_string("prompt", "", "Text to continue (LM) or to transform (seq2seq).")
    flags.DEFINE_integer("num_tokens", 200, "Tokens to generate (LM).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 = greedy.")
    flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens; 0 = all.")
    cli.run(main, config_flag=None)
