r"""Decoder-only Transformer language model on `pystdlib` (the Python standard library, as bytes).

    python -m attnx.train --config=configs/transformer_lm.py
    python -m attnx.train --config=configs/transformer_lm.py:smoke        # < 1 min on 2 CPU cores
    python -m attnx.train --config=configs/transformer_lm.py:attention=flash

Arguments (comma separated): `smoke` (tiny and fast), `attention=<registry name>`.
Default: 4 layers, d_model 128, 256-byte windows, batch 8, 1,500 steps (sized so that it learns
visibly in about ten minutes on 2 idle CPU cores; scale it up with --config.model.* overrides).

Sweep (`get_sweep`): the learning rate, three runs compared by validation bits per byte:

    python -m attnx.sweep --config=configs/transformer_lm.py --workdir=runs/transformer_lm_lr \
        --parallel=2
"""

from attnx import config_lib, sweep
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, attention="dense")
    config = config_lib.base_config()
    config.data = default_data_config(name="pystdlib", seq_len=256)
    config.model = config_lib.transformer_model(
        "transformer_lm", d_model=128, num_heads=4, num_layers=4, d_ff=512, max_len=256,
        attention=arg.attention)
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 1500
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.best_metric = "bits_per_byte"
    if arg.smoke:
        config.data.seq_len = 64
        config.model.update(d_model=64, num_heads=2, num_layers=2, d_ff=128, max_len=64)
        config_lib.set_schedule(config, steps=40, every=20, warmup_steps=5, batch_size=8,
                                eval_batch_size=8, log_every=10, eval_batches=2)
        config.sample_len = 16
        config.sample_prompt_len = 16
    return config


def get_sweep(arg: str | None = None):
    """`optimizer.learning_rate` in {3e-4, 1e-3, 3e-3} (the default is 1e-3), on the variant
    `arg` names."""
    del arg  # the same learning rates for every variant
    return sweep.axis("optimizer.learning_rate", [3e-4, 1e-3, 3e-3])
