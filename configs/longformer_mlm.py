r"""Longformer masked language model on windows of `pystdlib` bytes (sliding-window attention).

    python -m attnx.train --config=configs/longformer_mlm.py
    python -m attnx.train --config=configs/longformer_mlm.py:smoke
    python -m attnx.train --config=configs/longformer_mlm.py --config.model.attention_options.window=128

`longformer_mlm` reads language-model windows and corrupts them in the train step, BERT style:
15% of the bytes are chosen, 80% of those become [MASK] (id 256), 10% a random byte, 10% stay;
loss and accuracy are over the chosen bytes only (evaluation corrupts with a fixed key, so every
evaluation scores the same bytes). Every layer is Longformer's sliding window (no global tokens:
masked LM needs none). Arguments: `smoke` (tiny and fast).
Default: windows of 1,024 bytes, 2 layers, d_model 128, 4 heads, d_ff 512, window 64 (129 keys),
batch 8, 600 steps.
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False)
    config = config_lib.base_config()
    config.data = default_data_config(name="pystdlib", seq_len=1024)
    config.model = config_lib.transformer_model(
        "longformer_mlm", d_model=128, num_heads=4, num_layers=2, d_ff=512, max_len=1024,
        attention="longformer", attention_options=config_lib.attention_options("longformer", 1024),
        positional="learned", activation="gelu")
    config_lib.set_schedule(config, steps=600, every=200, warmup_steps=60, batch_size=8,
                            eval_batch_size=8, eval_batches=16, log_every=20)
    config.optimizer.learning_rate = 1e-3
    config.best_metric = "loss"
    config.num_samples = 0  # a masked LM does not generate
    if arg.smoke:
        config.data.seq_len = 128
        config.model.update(d_model=32, num_heads=2, num_layers=1, d_ff=64, max_len=128)
        config.model.attention_options.window = 8
        config_lib.set_schedule(config, steps=30, every=15, warmup_steps=3, batch_size=4,
                                eval_batch_size=4, eval_batches=2, log_every=10)
    return config
