r"""LRA Pathfinder (are the two circles joined by one dashed path?) with the mechanism by argument.

    python -m attnx.train --config=configs/lra_pathfinder.py:attention=longformer
    python -m attnx.train --config=configs/lra_pathfinder.py:attention=lsh,smoke
    python -m attnx.train --config=configs/lra_pathfinder.py:model=lstm
    python -m attnx.train --config=configs/lra_pathfinder.py:attention=dense,lra   # LRA's sizes
    python -m attnx.train --config=configs/lra_pathfinder.py:attention=dense,size=128,lra  # Path-X
    python -m attnx.train --config=configs/lra_pathfinder.py:attention=local --mode=eval \
        --split=test    # the best validation checkpoint on the test split

Images come from the generated `pathfinder` TFDS builder (`attnx/data/pathfinder.py`), read as
size * size pixel tokens (intensity + 1) in raster order. Arguments:
- `attention=<registry name>` (dense, flash, lsh, local, longformer, ...) with the
  `config_lib.attention_options` defaults; `longformer` uses `longformer_classifier`.
- `model=lstm`: the recurrent baseline (`lstm_classifier`).
- `size=32|64|128` (default 32) and `difficulty=hard|easy` (default hard: 14-dash paths, LRA's
  `curv_contour_length_14`, the setting of LRA's Table 1).
- `smoke`: the `tiny` builder config and a tiny model, seconds.
- `lra`: the LRA repo's Pathfinder setup on the LRA-sized builder config (160,000 training
  images): 1 layer, d_model 128, 4 heads, d_ff 128, mean pooling, dropout 0.2, batch 512, lr 1e-3
  with one epoch of warmup and cosine decay over 200 epochs, no weight decay or clipping (LRA's
  query/key/value width 64 < d_model is not representable here: heads are d_model / num_heads).
The default is the CPU budget of `experiments/lra`: the `small_<size>_<difficulty>` builder
(2,000 training images), 1 layer of width 32 (2 heads, d_ff 64), mean pooling, batch 32, 600 steps
(lr 1e-3, 60 warmup steps, cosine), evaluating the whole validation split every 120 steps.

Sweep (`get_sweep`): the mechanism comparison of `experiments/lra`, one run per mechanism of
`config_lib.LRA_MECHANISMS` and the LSTM, on whatever variant `--config` names:

    python -m attnx.sweep --config=configs/lra_pathfinder.py --parallel=2   # 6 runs
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, lra=False, attention="dense",
                               model="transformer", size=32, difficulty="hard")
    if arg.size not in (32, 64, 128) or arg.difficulty not in ("easy", "hard"):
        raise ValueError(f"size must be 32, 64 or 128 and difficulty 'easy' or 'hard', got "
                         f"size={arg.size}, difficulty={arg.difficulty!r}")
    config = config_lib.base_config()
    config.data = default_data_config(
        name="pathfinder", builder_config=f"small_{arg.size}_{arg.difficulty}",
        seq_len=arg.size**2)
    sizes = dict(d_model=32, num_heads=2, num_layers=1, d_ff=64, pool="mean")
    config_lib.lra_training(config, steps=600, every=120, warmup_steps=60,
                            learning_rate=1e-3)
    if arg.lra:
        config.data.builder_config = f"{arg.size}_{arg.difficulty}"
        sizes = dict(d_model=128, num_heads=4, num_layers=1, d_ff=128, pool="mean",
                     dropout_rate=0.2,
                     attention_dropout=config_lib.attention_dropout(arg.attention, 0.1))
        steps_per_epoch = 160_000 // 512
        config_lib.set_schedule(config, steps=200 * steps_per_epoch, every=steps_per_epoch,
                                warmup_steps=steps_per_epoch, batch_size=512,
                                eval_batch_size=512)
        config.optimizer.weight_decay = 0.0
        config.optimizer.clip_norm = None
    if arg.smoke:
        config.data.builder_config = "tiny"
        config.data.seq_len = 1024
        sizes = dict(d_model=16, num_heads=2, num_layers=1, d_ff=32, pool="mean")
        config_lib.set_schedule(config, steps=10, every=10, warmup_steps=2, batch_size=8,
                                eval_batch_size=16, eval_batches=1, log_every=5)
    config.model = config_lib.lra_classifier(arg.model, arg.attention, config.data.seq_len,
                                             **sizes)
    return config


def get_sweep(arg: str | None = None):
    """The LRA comparison (`config_lib.lra_comparison`), the same for every variant `arg`."""
    del arg
    return config_lib.lra_comparison()
