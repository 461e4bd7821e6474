"""Write tests/testdata/timm_maxvit_tf_small.npz: a small timm MaxxVit in the official (`_tf_`)
conventions, its weights, random inputs and its eval-mode logits, for tests/test_maxvit.py.

Run with a venv that has timm (PyTorch is not needed by the tests):

    python3 -m venv /work/venvs/timm && /work/venvs/timm/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 timm
    /work/venvs/timm/bin/python scripts/make_maxvit_parity.py

The model (`SMALL` below; the test builds attnx's MaxViT from the same fields): 64 x 128 RGB
inputs, stem 16, three stages of (32, 32, 64) channels with depths (1, 2, 1) (so every shortcut
kind appears: pooling only, pooling + 1x1 conv, identity), head width 16 (2 and 4 heads), window 4,
grid 2, head hidden size 64, 10 classes, stochastic depth off. Every parameter and BatchNorm
statistic is redrawn so that none is at its trivial initial value (relative position tables
with std 0.5).
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import timm
import torch
from timm.models import maxxvit

SMALL = dict(image_shape=(64, 128, 3), num_classes=10, stem_width=16, channels=(32, 32, 64),
             depths=(1, 2, 1), head_dim=16, window=4, grid=2, head_hidden_size=64)
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                   "testdata", "timm_maxvit_tf_small.npz")


def build() -> torch.nn.Module:
    tf = maxxvit._tf_cfg()
    transformer = dataclasses.replace(tf["transformer_cfg"], dim_head=SMALL["head_dim"],
                                      window_size=(SMALL["window"],) * 2,
                                      grid_size=(SMALL["grid"],) * 2)
    cfg = maxxvit.MaxxVitCfg(
        embed_dim=SMALL["channels"], depths=SMALL["depths"], block_type=("M",) * 3,
        stem_width=SMALL["stem_width"], stem_bias=True, head_hidden_size=SMALL["head_hidden_size"],
        conv_cfg=tf["conv_cfg"], transformer_cfg=transformer)
    return maxxvit.MaxxVit(cfg, img_size=SMALL["image_shape"][:2],
                           in_chans=SMALL["image_shape"][2], num_classes=SMALL["num_classes"],
                           drop_path_rate=0.0)


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Redraw every parameter and BatchNorm statistic (in place)."""
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "relative_position_bias_table" in name:
                tensor.copy_(0.5 * noise)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # norm scales
                tensor.copy_(1.0 + 0.1 * noise)
            elif "lookup" not in name:  # weights: keep PyTorch's fan-in scale
                tensor.copy_(noise * tensor.std().clamp(min=1e-3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    model = build()
    randomize(model, generator)
    model.eval()
    h, w, c = SMALL["image_shape"]
    image = torch.randn((2, c, h, w), generator=generator)
    with torch.no_grad():
        logits = model(image)
    arrays = {f"param/{k}": v.numpy() for k, v in model.state_dict().items()
              if v.is_floating_point() and "lookup" not in k}
    np.savez_compressed(args.out, image=image.permute(0, 2, 3, 1).numpy(),
                        logits=logits.numpy(), timm_version=np.array(timm.__version__),
                        torch_version=np.array(torch.__version__), **arrays)
    print(f"wrote {args.out}: {len(arrays)} tensors, logits {tuple(logits.shape)}, timm "
          f"{timm.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
