r"""LRA Image: CIFAR-10 as 1,024 grayscale pixel tokens (TFDS `cifar10`, where a user has it).

    python -m attnx.train --config=configs/lra_image.py:attention=longformer
    python -m attnx.train --config=configs/lra_image.py:model=lstm
    python -m attnx.train --config=configs/lra_image.py:attention=dense,lra    # LRA's sizes
    python -m attnx.train --config=configs/lra_image.py:attention=local --mode=eval --split=test

An image is converted to grayscale (ITU-R BT.601 luma, as tf.image.rgb_to_grayscale, rounded) and
read as 1,024 tokens, intensity + 1, in raster order. The dataset must be prepared where TFDS looks
(`cifar10`, e.g. `tfds build cifar10`, which needs TensorFlow), or `--config.data.data_dir` must
point at it. Splits: training on the first 90% of `train` (45,000 images, as LRA), model selection
on the last 10%, the test split for `--mode=eval`. Arguments:
- `attention=<registry name>` with the `config_lib.attention_options` defaults; `longformer` uses
  `longformer_classifier`. `model=lstm`: the recurrent baseline.
- `smoke`: a tiny model, a few steps.
- `lra`: the LRA repo's CIFAR-10 setup: 1 layer, d_model 32, 1 head, d_ff 64, [CLS] pooling,
  learned positions, dropout 0.3 and attention dropout 0.2 (0 with flash, which has none), batch
  256, lr 5e-4 with one epoch of warmup and cosine decay over 200 epochs, no weight decay or
  clipping.
The default is CPU-sized: 2 layers of width 64.
"""

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, lra=False, attention="dense",
                               model="transformer")
    config = config_lib.base_config()
    config.data = default_data_config(
        name="cifar10", seq_len=1024, train_split="train[:90%]", eval_split="train[90%:]",
        test_split="test")
    sizes = dict(d_model=64, num_heads=4, num_layers=2, d_ff=128, pool="cls")
    config_lib.lra_training(config, steps=3000, every=250, warmup_steps=200,
                            learning_rate=1e-3)
    if arg.lra:
        steps_per_epoch = 45_000 // 256
        sizes = dict(d_model=32, num_heads=1, num_layers=1, d_ff=64, pool="cls",
                     positional="learned", dropout_rate=0.3,
                     attention_dropout=config_lib.attention_dropout(arg.attention, 0.2))
        config_lib.set_schedule(config, steps=200 * steps_per_epoch, every=steps_per_epoch,
                                warmup_steps=steps_per_epoch, batch_size=256,
                                eval_batch_size=256)
        config.optimizer.learning_rate = 5e-4
        config.optimizer.weight_decay = 0.0
        config.optimizer.clip_norm = None
    if arg.smoke:
        sizes = dict(d_model=16, num_heads=2, num_layers=1, d_ff=32, pool="cls")
        config_lib.set_schedule(config, steps=4, every=4, warmup_steps=1, batch_size=8,
                                eval_batch_size=8, eval_batches=1, log_every=2)
    config.model = config_lib.lra_classifier(arg.model, arg.attention, config.data.seq_len,
                                             **sizes)
    return config
