r"""LRA Text: byte-level IMDb sentiment classification (TFDS `imdb_reviews`, where a user has it).

    python -m attnx.train --config=configs/lra_text.py:attention=longformer
    python -m attnx.train --config=configs/lra_text.py:model=lstm
    python -m attnx.train --config=configs/lra_text.py:attention=dense,lra             # 1K bytes
    python -m attnx.train --config=configs/lra_text.py:attention=dense,lra,length=4000 # paper's 4K
    python -m attnx.train --config=configs/lra_text.py:attention=lsh --mode=eval --split=test

Reviews are read as UTF-8 bytes + 1 (0 is padding), truncated or padded to `length` bytes. The
dataset must be prepared where TFDS looks (`imdb_reviews`, e.g. `tfds build imdb_reviews`, which
needs TensorFlow), or `--config.data.data_dir` must point at it. Splits: training on the first 90%
of `train`, model selection on the last 10%, the test split for `--mode=eval`. Arguments:
- `attention=<registry name>` with the `config_lib.attention_options` defaults; `longformer` uses
  `longformer_classifier`. `model=lstm`: the recurrent baseline.
- `length=` bytes per review (default 1000, LRA's repo; the LRA paper used 4000).
- `smoke`: 128 bytes and a tiny model, a few steps.
- `lra`: the LRA repo's text setup: 4 layers, d_model 256, 4 heads, d_ff 1024, [CLS] pooling,
  batch 32, 20,000 steps, lr 0.05 with linear warmup over 8,000 steps and rsqrt decay, weight
  decay 0.1.
The default is CPU-sized: 2 layers of width 64.
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, lra=False, attention="dense",
                               model="transformer", length=1000)
    config = config_lib.base_config()
    config.data = default_data_config(
        name="imdb_reviews", seq_len=arg.length, train_split="train[:90%]",
        eval_split="train[90%:]", test_split="test")
    sizes = dict(d_model=64, num_heads=4, num_layers=2, d_ff=128, pool="cls")
    config_lib.lra_training(config, steps=3000, every=250, warmup_steps=200,
                            learning_rate=5e-4)
    if arg.lra:
        sizes = dict(d_model=256, num_heads=4, num_layers=4, d_ff=1024, pool="cls")
        config.num_train_steps = 20_000
        config.optimizer.learning_rate = 0.05 / 8000**0.5  # LRA: 0.05 * rsqrt(max(step, 8000))
        config.optimizer.warmup_steps = 8000
        config.optimizer.schedule = "rsqrt"
        config.optimizer.weight_decay = 0.1
    if arg.smoke:
        config.data.seq_len = 128
        sizes = dict(d_model=16, num_heads=2, num_layers=1, d_ff=32, pool="cls")
        config_lib.set_schedule(config, steps=4, every=4, warmup_steps=1, batch_size=8,
                                eval_batch_size=8, eval_batches=1, log_every=2)
    config.model = config_lib.lra_classifier(arg.model, arg.attention, config.data.seq_len,
                                             **sizes)
    return config
