r"""The convolutional baseline on Pathfinder-32 images, beside configs/maxvit_pathfinder.py.

    python -m attnx.train --config=configs/cnn_pathfinder.py
    python -m attnx.train --config=configs/cnn_pathfinder.py:smoke
    python -m attnx.train --config=configs/cnn_pathfinder.py --mode=eval --split=test

`attnx/models/cnn.py`'s ConvNet: five 3x3 convolutions of 32, 64, 64, 128, 128 channels (the
first at stride 1, then stride 2: maps of 32, 16, 8, 4, 2), BatchNorm and ReLU, global average
pooling, a linear head: 0.28M parameters (277,858). No attention: a control that says whether
the task is learnable in the budget at all. Data and training as configs/maxvit_pathfinder.py
(`config_lib.pathfinder_image_training`). Arguments: `difficulty=hard|easy`; `first_stride=2`:
the first convolution at stride 2 too (maps of 16, 8, 4, 2, 1: the early downsampling of
MaxViT's stem); `smoke`: the `tiny` builder config, two convolutions of 8 channels, 3 steps.
"""

import ml_collections

from attnx import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, difficulty="hard", first_stride=1)
    config = config_lib.base_config()
    config_lib.pathfinder_image_training(config, difficulty=arg.difficulty, smoke=arg.smoke)
    channels = (8, 8) if arg.smoke else (32, 64, 64, 128, 128)
    config.model = ml_collections.ConfigDict(dict(name="cnn_classifier", channels=channels,
                                                  first_stride=arg.first_stride, bn_momentum=0.9))
    return config


def get_sweep(arg: str | None = None):
    """The ConvNet rows of experiments/maxvit: the hard and the easy difficulty."""
    del arg
    return [{":difficulty": "hard"}, {":difficulty": "easy"}]
