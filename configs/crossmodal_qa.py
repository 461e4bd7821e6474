r"""Questions about three handwritten digits (`digit_qa`), answered by a two-modality model.

    python -m attnx.train --config=configs/crossmodal_qa.py:block=cross --workdir=runs/qa_cross
    python -m attnx.train --config=configs/crossmodal_qa.py:block=co,shared --workdir=runs/qa_lx
    python -m attnx.train --config=configs/crossmodal_qa.py:block=text_only --workdir=runs/qa_t
    python -m attnx.train --config=configs/crossmodal_qa.py:block=cross,smoke --workdir=/tmp/s
    python -m attnx.train --config=configs/crossmodal_qa.py:block=gated --workdir=runs/qa_gated \
        --mode=eval --split=test

The `digit_qa` TFDS builder (`attnx/data/digit_qa.py`): a canvas `[8, 24, 1]` of three real
handwritten digits and a question ("sum ?", "largest ?", "how many 7 ?", "is there a 3 left of a
5 ?") with one of 30 answers; the question alone reaches at most 22.1% and the digits alone at
most 41.5% (`digit_qa.single_modality_ceilings()`). The model (`attnx/models/multimodal.py`): 4 x 4
patches (12 image tokens) and the question's words, each through one pre-LN self-attention layer
of width 64 (4 heads, d_ff 128), then `fusion_layers=2` blocks of `block`, then a linear head.
Arguments:
- `block=cross|co|gated|perceiver|text_only|image_only` (the last two: the single-modality
  baselines); `shared`: co-attention with one module for both directions (LXMERT);
- `cross_attention=dense|flash`: the fusion blocks' mechanism (flash: its XLA path off GPU);
- `smoke`: the `tiny` builder config, width 16, one fusion block, 3 steps.
Training (the CPU budget of experiments/crossmodal): batch 64, AdamW lr 2e-3, weight decay 0.01,
100 warmup steps and cosine decay over 2,000 steps, whole-split validation every 500 steps, model
selection by validation accuracy.
"""

import ml_collections

from attnx import config_lib
from attnx.data import default_data_config

QUESTION_LEN = 10  # the longest question (9 words), padded


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, block="cross", shared=False,
                               cross_attention="dense")
    config = config_lib.base_config()
    config.data = default_data_config(name="digit_qa", builder_config="default",
                                      seq_len=QUESTION_LEN)
    config_lib.lra_training(config, steps=2000, every=500, warmup_steps=100, learning_rate=2e-3)
    config.batch_size = 64
    sizes = dict(patch_size=4, d_model=64, num_heads=4, d_ff=128, image_layers=1, text_layers=1,
                 fusion_layers=2, num_latents=8)
    if arg.smoke:
        config.data.builder_config = "tiny"
        sizes = dict(patch_size=4, d_model=16, num_heads=2, d_ff=32, image_layers=1,
                     text_layers=1, fusion_layers=1, num_latents=4)
        config_lib.set_schedule(config, steps=3, every=3, warmup_steps=1, batch_size=8,
                                eval_batch_size=16, eval_batches=1, log_every=1)
    options = ml_collections.ConfigDict()
    if arg.cross_attention == "flash":
        options = ml_collections.ConfigDict(dict(implementation="auto"))
    config.model = ml_collections.ConfigDict(dict(
        name="multimodal", block=arg.block, shared=arg.shared, max_len=QUESTION_LEN,
        attention="dense", attention_options=ml_collections.ConfigDict(),
        cross_attention=arg.cross_attention, cross_attention_options=options, **sizes))
    return config


def get_sweep(arg: str | None = None):
    """The rows of experiments/crossmodal: each fusion block (co-attention also with one shared
    module), then the two single-modality baselines."""
    del arg
    return ([{":block": "cross"}, {":block": "co"}, {":block": "co", ":shared": True}]
            + [{":block": block} for block in ("gated", "perceiver", "text_only", "image_only")])
