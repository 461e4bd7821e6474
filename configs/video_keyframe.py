r"""A video transformer with key-frame attention on moving handwritten digits: every frame's
queries attend to the key frames' tokens and their own frame's.

    python -m attnx.train --config=configs/video_keyframe.py --workdir=runs/video_keyframe
    python -m attnx.train --config=configs/video_keyframe.py:smoke
    python -m attnx.train --config=configs/video_keyframe.py:key_frames=learned:2
    python -m attnx.train --config=configs/video_keyframe.py:key_frames=anchor+previous
    python -m attnx.train --config=configs/video_keyframe.py:ucf101

Data, sizes and training as configs/video_divided.py (`moving_digits/small`, width 32, 2 layers,
1,000 steps; `smoke`, `ucf101` likewise), with `block='keyframe'`. Arguments:
- `key_frames=stride:2` (the default: frames 0, 2, 4, 6), `stride:s`, `anchor` (frame 0),
  `anchor+previous` (frame 0 and t - 1, Tune-A-Video's sparse-causal attention), or `learned:k`
  (k frames per clip chosen by `attnx.layers.video.KeyFrameSelector`, its scores scaling their
  keys and values);
- `include_self` (default True): a frame's queries also see their own frame.
(The config string splits on commas, so explicit frame lists are set on the command line:
`--config.model.key_frames=...` takes the specs above.)
"""

import ml_collections

from attnx import config_lib

CPU = dict(patch_size=4, tubelet_frames=1, d_model=32, num_heads=2, num_layers=2, d_ff=64,
           pool="mean")
SMOKE = dict(CPU, d_model=16, num_layers=1, d_ff=32)
VIVIT_B = dict(patch_size=16, tubelet_frames=2, d_model=768, num_heads=12, num_layers=12,
               d_ff=3072, pool="cls", dropout_rate=0.1)


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, ucf101=False, key_frames="stride:2",
                               include_self=True)
    config = config_lib.base_config()
    config_lib.video_training(config, smoke=arg.smoke, ucf101=arg.ucf101)
    sizes = VIVIT_B if arg.ucf101 else SMOKE if arg.smoke else CPU
    config.model = ml_collections.ConfigDict(dict(
        name="video_transformer", block="keyframe", key_frames=arg.key_frames,
        include_self=arg.include_self, **sizes))
    return config


def get_sweep(arg: str | None = None):
    """The key-frame rows of experiments/video: every second frame, and two learned frames."""
    del arg
    return [{":key_frames": "stride:2"}, {":key_frames": "learned:2"}]
