"""`sklearn_digits`: scikit-learn's 1,797 handwritten digits (the UCI "optical recognition of
handwritten digits" test set, 8 x 8 pixels of 17 grey levels, shipped inside scikit-learn) as a
small real-handwriting image dataset.

Builder configs:
- `8x8`: the images as they are, `[8, 8, 1]` uint8, grey level g in 0..16 stored as
  round(255 * g / 16);
- `32x32`: each pixel repeated 4 x 4 times (nearest-neighbour upsampling), `[32, 32, 1]`, the
  size of Pathfinder-32, so the image models and their configs run on it unchanged.
The label is the digit (10 classes). Splits: a permutation of the 1,797 images drawn from
`numpy.random.default_rng(seed)` (seed 0), the first 1,297 for train, then 250 for validation
and 250 for test, each split in permutation order. Deterministic given scikit-learn's copy of
the data (unchanged since its 0.x releases) and NumPy (pinned); changing any of this bumps VERSION.

Served as `image` (default; float `[H, W, 1]` in [0, 1]) or `tokens` (grey level + 1 per pixel
in raster order, for the sequence models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DatasetSpec, Served, builder_of_configs

SPLITS = ("train", "validation", "test")
SPLIT_SIZES = (1_297, 250, 250)
LEVELS = 16  # scikit-learn's grey levels are 0..16


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
    """Image side (8: as shipped, or a multiple of 8: upsampled) and the split seed."""

    image_size: int = 8
    seed: int = 0


def images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: uint8 images `[1797, 8, 8]` (0..255) and int labels `[1797]`."""
    from sklearn.datasets import load_digits  # the only user of scikit-learn

    digits = load_digits()
    images = np.round(digits.images * (255 / LEVELS)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def split_indices(seed: int) -> dict[str, np.ndarray]:
    """The indices of each split into scikit-learn's order."""
    order = np.random.default_rng(seed).permutation(sum(SPLIT_SIZES))
    bounds = np.cumsum((0,) + SPLIT_SIZES)
    return {split: order[lo:hi] for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:])}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 handwritten digits, 8 x 8 or upsampled to 32 x 32."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Configs 8x8 and 32x32; 1,297/250/250 from seed 0."}
    BUILDER_CONFIGS = [
        DigitsConfig(name="8x8", description="As shipped: 8 x 8.", image_size=8),
        DigitsConfig(name="32x32", description="Upsampled 4 x 4: 32 x 32.", image_size=32),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "32x32"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Read from the installed scikit-learn.
        images, labels = images_and_labels()
        scale = self.builder_config.image_size // 8
        upsampled = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)[..., None]
        indices = split_indices(self.builder_config.seed)
        return {split: self._generate_examples(upsampled, labels, indices[split])
                for split in SPLITS}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                           indices: np.ndarray) -> Iterator[tuple[int, dict]]:
        for key, index in enumerate(indices):
            yield key, {"image": images[index], "label": int(labels[index])}


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """`representations.image_tokens`, with `data.seq_len` at least the pixel count."""
    pixels = builder.builder_config.image_size**2
    if config.seq_len < pixels:
        raise ValueError(f"data.seq_len={config.seq_len} would truncate sklearn_digits/"
                         f"{builder.builder_config.name} images of {pixels} pixels")
    return representations.image_tokens(builder, config)


SPEC = DatasetSpec(
    builder=builder_of_configs(SklearnDigits),
    representations={"image": representations.images, "tokens": _tokens},
    default="image",
)
