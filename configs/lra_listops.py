r"""LRA ListOps classification with the attention mechanism chosen by argument.

    python -m attnx.train --config=configs/lra_listops.py:attention=longformer
    python -m attnx.train --config=configs/lra_listops.py:attention=lsh,smoke
    python -m attnx.train --config=configs/lra_listops.py:model=lstm
    python -m attnx.train --config=configs/lra_listops.py:attention=dense,lra    # LRA's sizes
    python -m attnx.train --config=configs/lra_listops.py:attention=longformer --mode=eval \
        --split=test    # the best validation checkpoint on the test split

Arguments:
- `attention=<registry name>` (dense, flash, lsh, local, longformer, ...): the encoder's
  mechanism, with `config_lib.attention_options` defaults (local chunks of 64, LSH 2 rounds of
  chunks of 64, Longformer window 64 with a global [CLS]); `longformer` uses the
  `longformer_classifier` model. Override options with `--config.model.attention_options.x=...`.
- `model=lstm`: the recurrent baseline (`lstm_classifier`) instead of the Transformer.
- `smoke`: tiny data and model, seconds.
- `lra`: the LRA repo's ListOps setup (6 layers, d_model 512, 8 heads, d_ff 2048, [CLS] pooling,
  length 2,000, batch 32, 5,000 steps, lr 0.05 with linear warmup over 1,000 steps and rsqrt
  decay, weight decay 0.1, on the full 96K-example `lra` builder config; accelerator-sized).
The default is the CPU budget of `experiments/lra`: the `small` ListOps builder (16K expressions
of 64-512 tokens), 2 layers of width 64 (4 heads, d_ff 128), batch 32, 500 steps (one epoch; lr
1e-3, 50 warmup steps, cosine), evaluating the whole validation split every 100 steps.

Sweep (`get_sweep`): the mechanism comparison of `experiments/lra`, one run per attention
mechanism and the LSTM, on whatever variant `--config` names:

    python -m attnx.sweep --config=configs/lra_listops.py --parallel=2   # 6 runs
    python -m attnx.sweep --config=configs/lra_listops.py --sweep=seed=0,1,2 --parallel=2  # x 3 seeds

Its runs are `runs/lra_listops_sweep/attention=dense`, ..., `runs/lra_listops_sweep/model=lstm`
(`--workdir` to choose), compared in `runs/lra_listops_sweep/summary.md` by validation accuracy.
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, lra=False, attention="dense",
                               model="transformer")
    config = config_lib.base_config()
    config.data = default_data_config(name="listops", builder_config="small", seq_len=512)
    sizes = dict(d_model=64, num_heads=4, num_layers=2, d_ff=128, pool="cls")
    config_lib.lra_training(config, steps=500, every=100, warmup_steps=50,
                            learning_rate=1e-3)
    if arg.lra:
        config.data.builder_config = "lra"
        config.data.seq_len = 2000
        sizes = dict(d_model=512, num_heads=8, num_layers=6, d_ff=2048, pool="cls")
        config.num_train_steps = 5000
        config.optimizer.learning_rate = 0.05 / 1000**0.5  # LRA: 0.05 * rsqrt(max(step, 1000))
        config.optimizer.warmup_steps = 1000
        config.optimizer.schedule = "rsqrt"
        config.optimizer.weight_decay = 0.1
    if arg.smoke:
        config.data.builder_config = "tiny"
        config.data.seq_len = 128
        sizes = dict(d_model=32, num_heads=2, num_layers=1, d_ff=64, pool="cls")
        config_lib.set_schedule(config, steps=20, every=10, warmup_steps=2, batch_size=8,
                                eval_batch_size=16, eval_batches=2, log_every=10)
    config.model = config_lib.lra_classifier(arg.model, arg.attention, config.data.seq_len,
                                             **sizes)
    return config


def get_sweep(arg: str | None = None):
    """One run per mechanism of `config_lib.LRA_MECHANISMS` (`:attention=<name>`), then the LSTM
    baseline (`:model=lstm`); `arg` (the `--config` argument, e.g. `smoke`) is shared by every
    run."""
    del arg  # the same comparison for every variant
    return config_lib.lra_comparison()
