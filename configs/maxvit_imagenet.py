r"""MaxViT on ImageNet-1K at 224 px with the paper's recipe (Tu et al. 2022, Sec. 4.1 / Table 8),
for a user with the data and accelerators.

    python -m attnx.train --config=configs/maxvit_imagenet.py:variant=T
    python -m attnx.train --config=configs/maxvit_imagenet.py:variant=B
    python -m attnx.train --config=configs/maxvit_imagenet.py:smoke     # the recipe's step, seconds

Images are cut to 224 x 224 (`data.image_size`): Inception's random resized crop, a flip and
RandAugment (2 operations at magnitude 15) to train, the central crop after resizing the shorter
side to 256 to evaluate (`attnx.data.image_ops`).
What the recipe sets here: 300 epochs of batch 4096 (1,281,167 images: 312 steps an epoch),
AdamW (b1 0.9, b2 0.999) with peak learning rate 3e-3 after 10,000 linear warmup steps and cosine
decay, weight decay 0.05, gradient clipping at norm 1.0, label smoothing 0.1, mixup 0.8 (in the
train step: `attnx.tasks.mixup`), stochastic depth 0.2 / 0.3 / 0.4 (T / S / B), BatchNorm
momentum 0.99, evaluation every epoch on the validation split of the weights' exponential moving
average (decay 0.9999, `optimizer.ema_decay`, as the official code evaluates), selection by
accuracy.
The paper's top-1 at 224: T 83.62, S 84.45, B 84.95.

`smoke` runs the same step (mixup, label smoothing, stochastic depth, BatchNorm) with a tiny
model on the `tiny` Pathfinder images, for tests.
"""

import ml_collections

from attnx import config_lib
from attnx.data import default_data_config
from attnx.models import maxvit

STOCHASTIC_DEPTH = {"T": 0.2, "S": 0.3, "B": 0.4}
TRAIN_IMAGES = 1_281_167


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, variant="T")
    if arg.variant not in STOCHASTIC_DEPTH:
        raise ValueError(f"variant must be one of {sorted(STOCHASTIC_DEPTH)}, "
                         f"got {arg.variant!r}")
    config = config_lib.base_config()
    config.data = default_data_config(name="imagenet2012", representation="image", image_size=224,
                                      randaugment_layers=2, randaugment_magnitude=15.0)
    steps_per_epoch = TRAIN_IMAGES // 4096
    config_lib.set_schedule(config, steps=300 * steps_per_epoch, every=steps_per_epoch,
                            warmup_steps=10_000, batch_size=4096, eval_batch_size=1024,
                            eval_batches=None, num_samples=0)
    config.optimizer.update(learning_rate=3e-3, b2=0.999, eps=1e-8, weight_decay=0.05,
                            schedule="cosine", clip_norm=1.0, ema_decay=0.9999)
    config.label_smoothing = 0.1
    config.best_metric, config.best_mode = "accuracy", "max"
    sizes = dict(maxvit.VARIANTS[arg.variant])
    model = dict(stochastic_depth=STOCHASTIC_DEPTH[arg.variant], mixup_alpha=0.8,
                 bn_momentum=0.99)
    if arg.smoke:
        config.data.update(name="pathfinder", builder_config="tiny", image_size=None,
                           randaugment_layers=0)
        sizes = dict(stem_width=8, channels=(16,), depths=(1,), window=2, grid=2, head_dim=8)
        config_lib.set_schedule(config, steps=3, every=3, warmup_steps=1, batch_size=8,
                                eval_batch_size=16, eval_batches=1, log_every=1)
    config.model = ml_collections.ConfigDict(dict(name="maxvit", **sizes, **model))
    return config
