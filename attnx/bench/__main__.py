"""`python -m attnx.bench`: flags -> the mechanism mode (`run_mechanisms`) or, with `--config`, the
model-level mode (`model.run_model`). See `attnx/bench/__init__.py`."""

from __future__ import annotations

from typing import Sequence

from absl import app, flags
from ml_collections import config_flags

from attnx.attention import registry
from attnx.bench import run_mechanisms
from attnx.bench.measure import DTYPES, progress
from attnx.bench.model import run_model
from attnx.bench.report import environment_info, to_markdown, write_outputs

_MECHANISMS = flags.DEFINE_list("mechanisms", None,
                                "Registry names to benchmark (default: all registered).")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192"], "Sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Input dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (after one warm-up).")
_BLOCK = flags.DEFINE_integer("block", 64,
                              "LSH/local chunk length; the Longformer window is twice this.")
_PEERS = flags.DEFINE_boolean("peers", False,
                              "Also time the PyTorch / HF transformers peers (needs attnx[peers]).")
_OUT = flags.DEFINE_string("out", None, "Write bench.md, bench.json and bench.png here.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model-level mode: training throughput and MFU of this config "
    "(configs/x.py[:arg]); --config.a.b=v overrides apply.", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 10, "Model-level mode: timed train steps (after 2 warm-up).")
_SYNTHETIC = flags.DEFINE_boolean(
    "synthetic", False, "Model-level mode: random batches of the shapes the config's dataset "
    "serves, from its metadata (no data needed: e.g. ImageNet).")


def _parse_lengths(values: Sequence[str]) -> list[int]:
    try:
        lengths = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--lengths must be integers, got {','.join(values)}") from None
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"--lengths must be positive integers, got {','.join(values)}")
    return lengths


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is not None:
        run_model(_CONFIG.value, steps=_STEPS.value, out=_OUT.value, peers=_PEERS.value,
                  synthetic=_SYNTHETIC.value)
        return
    names = _MECHANISMS.value or registry.names(layout="sequence")
    mechanisms = [registry.get(name) for name in names]
    settings = dict(mechanisms=names, lengths=_parse_lengths(_LENGTHS.value), batch=_BATCH.value,
                    heads=_HEADS.value, head_dim=_HEAD_DIM.value, dtype=_DTYPE.value,
                    repeats=_REPEATS.value, block=_BLOCK.value, peers=_PEERS.value)
    records, peers_note = run_mechanisms(mechanisms, **{k: v for k, v in settings.items()
                                                         if k != "mechanisms"})
    environment = environment_info(_PEERS.value)
    markdown = to_markdown(records, repeats=_REPEATS.value, environment=environment,
                           peers_note=peers_note)
    print(markdown)
    if _OUT.value:
        write_outputs(records, _OUT.value, markdown=markdown, settings=settings,
                      environment=environment)
        progress(f"wrote {_OUT.value}/bench.md, bench.json, bench.png")


if __name__ == "__main__":
    from attnx import cli

    cli.run(main)
