r"""Encoder-decoder Transformer on an embedded seq2seq task (reverse or sort a digit string).

    python -m attnx.train --config=configs/transformer_seq2seq.py
    python -m attnx.train --config=configs/transformer_seq2seq.py:task=sort,smoke
    python -m attnx.train --config=configs/transformer_seq2seq.py:paper     # base model sizes
    python -m attnx.sample --workdir=runs/transformer_seq2seq --prompt=31415926

Arguments: `task=reverse|sort`, `smoke`, `paper` ("Attention Is All You Need" base settings: 6+6
layers, d_model 512, 8 heads, d_ff 2048, dropout 0.1, post-LN, Adam b2 0.98, inverse-sqrt warmup
4,000, label smoothing 0.1).
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, paper=False, task="reverse")
    config = config_lib.base_config()
    config.data = default_data_config(name="seq2seq_digits", builder_config=arg.task,
                                      seq_len=32, target_len=33)
    config.model = config_lib.transformer_model(
        "transformer_seq2seq", d_model=128, num_heads=4, num_layers=2, d_ff=512, max_len=64)
    config.batch_size = 32
    config.num_train_steps = 2000
    config.eval_every = 500
    config.best_metric = "accuracy"
    config.best_mode = "max"
    config.num_samples = 2
    if arg.paper:
        config.model.update(d_model=512, num_heads=8, num_layers=6, num_decoder_layers=6,
                            d_ff=2048, dropout_rate=0.1, attention_dropout=0.1, norm="post")
        config.optimizer.update(name="adam", b1=0.9, b2=0.98, eps=1e-9, learning_rate=1.0,
                                schedule="rsqrt", warmup_steps=4000, clip_norm=None)
        # rsqrt schedule: lr = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
        config.optimizer.learning_rate = 512**-0.5 * 4000**-0.5
        config.label_smoothing = 0.1
        config.num_train_steps = 100_000
    if arg.smoke:
        config.data.seq_len = 16
        config.data.target_len = 17
        config.model.update(d_model=32, num_heads=2, num_layers=1, d_ff=64, max_len=32)
        config_lib.set_schedule(config, steps=20, every=10, warmup_steps=2, batch_size=8,
                                eval_batch_size=8, log_every=10, eval_batches=2)
    return config
