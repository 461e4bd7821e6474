r"""The dense-attention ViT baseline on Pathfinder-32 images, beside configs/maxvit_pathfinder.py.

    python -m attnx.train --config=configs/vit_pathfinder.py
    python -m attnx.train --config=configs/vit_pathfinder.py:smoke
    python -m attnx.train --config=configs/vit_pathfinder.py --mode=eval --split=test

A plain ViT (`attnx/models/vit.py`): 4 x 4 patches (64 tokens + [CLS]), 7 pre-LN layers of width
128 (4 heads, d_ff 512), dense attention: 1.40M parameters, as MaxViT `cpu32` (1.40M). Data and training as configs/maxvit_pathfinder.py: `small_32_<difficulty>` images,
batch 32, AdamW lr 1e-3, weight decay 0.05, 60 warmup steps, cosine over 600 steps, validation
every 120 steps. Arguments: `difficulty=hard|easy`; `smoke`: the `tiny` builder config, a
one-layer model of width 16, 3 steps.
"""

import ml_collections

from attnx import config_lib
from attnx.data import default_data_config


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, difficulty="hard")
    if arg.difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {arg.difficulty!r}")
    config = config_lib.base_config()
    config.data = default_data_config(
        name="pathfinder", builder_config=f"small_32_{arg.difficulty}", representation="image")
    config_lib.lra_training(config, steps=600, every=120, warmup_steps=60, learning_rate=1e-3)
    config.optimizer.weight_decay = 0.05
    sizes = dict(patch_size=4, d_model=128, num_heads=4, num_layers=7, d_ff=512)
    if arg.smoke:
        config.data.builder_config = "tiny"
        sizes = dict(patch_size=8, d_model=16, num_heads=2, num_layers=1, d_ff=32)
        config_lib.set_schedule(config, steps=3, every=3, warmup_steps=1, batch_size=8,
                                eval_batch_size=16, eval_batches=1, log_every=1)
    config.model = ml_collections.ConfigDict(dict(name="vit", pool="cls", dropout_rate=0.0,
                                                  **sizes))
    return config


def get_sweep(arg: str | None = None):
    """The ViT rows of experiments/maxvit: the hard and the easy difficulty."""
    del arg
    return [{":difficulty": "hard"}, {":difficulty": "easy"}]
