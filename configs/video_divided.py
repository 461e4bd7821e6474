r"""A video transformer on moving handwritten digits (which way does the digit move?), with the
space-time attention block chosen by argument (TimeSformer's divided attention by default).

    python -m attnx.train --config=configs/video_divided.py --workdir=runs/video_divided
    python -m attnx.train --config=configs/video_divided.py:smoke             # seconds
    python -m attnx.train --config=configs/video_divided.py:block=joint       # or another block
    python -m attnx.train --config=configs/video_divided.py:block=joint \
        --config.data.num_frames=1                                # the single-frame baseline
    python -m attnx.train --config=configs/video_divided.py:ucf101            # real data
    python -m attnx.train --config=configs/video_divided.py --mode=eval --split=test

Clips come from the generated `moving_digits` TFDS builder (`attnx/data/moving_digits.py`): the
`small` config, 8 frames of 16 x 16 (the digit moves 4 pixels, one patch, a frame), served as
float clips with a frame mask. Arguments:
- `block=divided|joint|factorized_heads|factorized_encoder` (`attnx/models/video.py`; key-frame
  blocks: configs/video_keyframe.py);
- `smoke`: the `tiny` clips (4 frames of 8 x 8), one block of width 16, 3 steps;
- `ucf101`: TFDS `ucf101/ucf101_1_256` by name (16 frames of 256 x 256, 101 actions; the user
  prepares it, which needs TensorFlow) with ViViT-B/16x2 sizes: 16 x 16 patches, tubelets of 2
  frames, width 768, 12 heads, 12 layers, [CLS] pooling, batch 64, 30,000 steps.
The default is the CPU budget of experiments/video: 4 x 4 patches of single frames (so only
attention carries time: 8 frames x 16 tokens), width 32, 2 heads, 2 layers, MLP 64, mean
pooling; batch 32, AdamW lr 2e-3, 50 warmup steps and cosine decay over 1,000 steps, validation
every 250 steps, model selection by validation accuracy (`config_lib.video_training`).
"""

import ml_collections

from attnx import config_lib

BLOCKS = ("divided", "joint", "factorized_heads", "factorized_encoder")
CPU = dict(patch_size=4, tubelet_frames=1, d_model=32, num_heads=2, num_layers=2, d_ff=64,
           temporal_layers=1, pool="mean")
SMOKE = dict(CPU, d_model=16, num_layers=1, d_ff=32)
# ViViT-B/16x2 (Arnab et al., 2021), as scenic's model zoo trains it on Kinetics.
VIVIT_B = dict(patch_size=16, tubelet_frames=2, d_model=768, num_heads=12, num_layers=12,
               d_ff=3072, temporal_layers=4, pool="cls", dropout_rate=0.1)


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, ucf101=False, block="divided")
    if arg.block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS} (key-frame blocks: "
                         f"configs/video_keyframe.py), got {arg.block!r}")
    config = config_lib.base_config()
    config_lib.video_training(config, smoke=arg.smoke, ucf101=arg.ucf101)
    sizes = VIVIT_B if arg.ucf101 else SMOKE if arg.smoke else CPU
    config.model = ml_collections.ConfigDict(dict(name="video_transformer", block=arg.block,
                                                  **sizes))
    return config


def get_sweep(arg: str | None = None):
    """The block comparison of experiments/video (with configs/video_keyframe.py's sweep): each
    block, the factorised encoder with [CLS] pooling, and the single-frame baseline."""
    del arg  # the same rows for every variant
    return ([{":block": block} for block in BLOCKS]
            + [{":block": "factorized_encoder", "model.pool": "cls"},
               {":block": "joint", "data.num_frames": 1}])
