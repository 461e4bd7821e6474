r"""MaxViT on Pathfinder-32 images (are the two circles joined by one dashed path?).

    python -m attnx.train --config=configs/maxvit_pathfinder.py                 # CPU default
    python -m attnx.train --config=configs/maxvit_pathfinder.py:smoke           # seconds
    python -m attnx.train --config=configs/maxvit_pathfinder.py:block_only      # no grid attention
    python -m attnx.train --config=configs/maxvit_pathfinder.py:variant=T       # the paper's sizes
    python -m attnx.train --config=configs/maxvit_pathfinder.py --mode=eval --split=test

Images come from the generated `pathfinder` TFDS builder (`attnx/data/pathfinder.py`): its
`medium_32_<difficulty>` config (20,000 training images; generated on first use, 7 ms an
image for easy and 32 ms for hard on one core), served as float images `[32, 32, 1]`
(`data.representation='image'`), each training image turned by a random symmetry of the square
(`data.dihedral_augment`). Arguments:
- `variant=cpu32|T|S|B`: `attnx.models.maxvit.VARIANTS`. At 32 x 32 the stage maps are 8, 4, 2
  and 1 tokens wide, so every variant uses window = grid = (4, 4, 2, 1) here (the paper's 7 is
  for 224 px).
- `block_only`: MaxViT blocks without grid attention (the ablation: no global mixing).
- `difficulty=hard|easy` (default hard).
- `smoke`: the `tiny` builder config, a one-stage model of width 16, 3 steps.
The default is the CPU budget of experiments/maxvit (`config_lib.pathfinder_image_training`, the
same for configs/vit_pathfinder.py and configs/cnn_pathfinder.py): `cpu32` (stem 32; channels 32,
64, 96, 128; depths 1, 1, 2, 1; 1.40M parameters), batch 32, AdamW lr 1e-3 with weight decay
0.05, 60 warmup steps and cosine decay over 3,000 steps (366 ms a step on 2 idle cores),
stochastic depth 0.1, BatchNorm momentum 0.9 (the official 0.99 averages over more steps than
this budget has), whole-split validation every 500 steps, model selection by validation accuracy.
"""

import ml_collections

from attnx import config_lib
from attnx.models import maxvit

WINDOW_32 = (4, 4, 2, 1)


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, block_only=False, variant="cpu32",
                               difficulty="hard")
    if arg.variant not in maxvit.VARIANTS:
        raise ValueError(f"variant must be one of {sorted(maxvit.VARIANTS)}, got "
                         f"{arg.variant!r}")
    config = config_lib.base_config()
    config_lib.pathfinder_image_training(config, difficulty=arg.difficulty, smoke=arg.smoke)
    sizes = dict(maxvit.VARIANTS[arg.variant], window=WINDOW_32, grid=WINDOW_32)
    model = dict(stochastic_depth=0.1, bn_momentum=0.9)
    if arg.smoke:
        sizes = dict(stem_width=8, channels=(16,), depths=(1,), window=2, grid=2, head_dim=8)
    config.model = ml_collections.ConfigDict(dict(
        name="maxvit", grid_attention=not arg.block_only, **sizes, **model))
    return config


def get_sweep(arg: str | None = None):
    """The MaxViT rows of experiments/maxvit: block + grid and block-only attention, on the hard
    and the easy difficulty (the ViT rows: configs/vit_pathfinder.py's sweep)."""
    del arg
    return [{":difficulty": difficulty, ":block_only": block_only}
            for difficulty in ("hard", "easy") for block_only in (False, True)]
