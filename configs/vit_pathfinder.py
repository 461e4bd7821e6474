r"""The dense-attention ViT baseline on Pathfinder-32 images, beside configs/maxvit_pathfinder.py.

    python -m attnx.train --config=configs/vit_pathfinder.py
    python -m attnx.train --config=configs/vit_pathfinder.py:smoke
    python -m attnx.train --config=configs/vit_pathfinder.py --mode=eval --split=test

A plain ViT (`attnx/models/vit.py`): 4 x 4 patches (64 tokens + [CLS]), 7 pre-LN layers of width
128 (4 heads, d_ff 512), dense attention: 1.40M parameters, as MaxViT `cpu32` (1.40M). Data and
training as configs/maxvit_pathfinder.py (`config_lib.pathfinder_image_training`:
`medium_32_<difficulty>` images turned by random symmetries of the square, batch 32, AdamW lr
1e-3, weight decay 0.05, 60 warmup steps, cosine over 3,000 steps, validation every 500 steps).
Arguments: `difficulty=hard|easy`; `smoke`: the `tiny` builder config, a one-layer model of
width 16, 3 steps.
"""

import ml_collections

from attnx import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, difficulty="hard")
    config = config_lib.base_config()
    config_lib.pathfinder_image_training(config, difficulty=arg.difficulty, smoke=arg.smoke)
    sizes = dict(patch_size=4, d_model=128, num_heads=4, num_layers=7, d_ff=512)
    if arg.smoke:
        sizes = dict(patch_size=8, d_model=16, num_heads=2, num_layers=1, d_ff=32)
    config.model = ml_collections.ConfigDict(dict(name="vit", pool="cls", dropout_rate=0.0,
                                                  **sizes))
    return config


def get_sweep(arg: str | None = None):
    """The ViT rows of experiments/maxvit: the hard and the easy difficulty."""
    del arg
    return [{":difficulty": "hard"}, {":difficulty": "easy"}]
