"""`moving_digits`: clips of a real handwritten digit moving on a canvas; the label is the
direction of motion, so it needs time.

A clip is `frames` grey frames `[canvas, canvas, 1]` uint8. One of scikit-learn's 8 x 8 handwritten
digits (`sklearn_digits`: the same 1,797 images and the same train / validation / test split of the
images, so test clips move digits no training clip shows), upsampled `digit_scale` times, starts at
a uniformly random position of the canvas and moves `speed` pixels a frame (`min_speed` ..
`max_speed`, uniform) in one of four directions: the label, 0 'right', 1 'left', 2 'down', 3 'up'.
The canvas is a torus: what leaves one side enters on the other. So the position of any one frame is
uniform whatever the direction (a single-frame model is at chance, 25%), and the mean of the frames
is a streak that tells the axis but not the sense (a frame-averaging model can reach 50% at best):
the direction is in the order of the frames.

Each record also keeps the `digit` (0-9), `speed` and `start` `[2]` (row, column). Labels are
exactly balanced within each split (n // 4 of each, plus the remainder in class order, in an
order drawn from the seed); everything comes from `numpy.random.default_rng((seed, split,
index))` per clip and scikit-learn's copy of the digits (NumPy is pinned; changing the generator
bumps VERSION).

Builder configs: `tiny` (4 frames of 8 x 8, speed 1-2, 64 / 32 / 32 clips: tests and smoke
runs), `small` (the default: 8 frames of 16 x 16, speed 4, i.e. one 4 x 4 patch a frame, 3,000 /
500 / 500), `medium` (16 frames of 32 x 32 with digits upsampled to 16 x 16, speed 1-3, 6,000 /
1,000 / 1,000). A speed must stay below half the canvas, or left and right could not be told
apart on the torus. Served as `video` (`data.image_key='video'`:
float clips `[T, H, W, 1]` in [0, 1] with a frame mask, `representations.clips`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from attnx.data import representations, sklearn_digits
from attnx.data.spec import DatasetSpec, builder_of_configs

SPLITS = ("train", "validation", "test")
DIRECTIONS = ("right", "left", "down", "up")
# (row, column) step of each direction.
_STEPS = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)])


@dataclasses.dataclass(eq=False)
class MovingDigitsConfig(tfds.core.BuilderConfig):
    """Frames per clip, canvas side, digit upsampling, speed range, clips per split, seed."""

    frames: int = 8
    canvas: int = 16
    digit_scale: int = 1
    min_speed: int = 1
    max_speed: int = 2
    num_train: int = 3_000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0


def render(digit: np.ndarray, start: tuple[int, int], direction: int, speed: int, frames: int,
           canvas: int) -> np.ndarray:
    """The clip `[frames, canvas, canvas]` of `digit` `[h, w]` (uint8) starting with its top-left
    corner at `start` and moving `speed` pixels a frame in `direction`, on a torus."""
    placed = np.zeros((canvas, canvas), np.uint8)
    placed[: digit.shape[0], : digit.shape[1]] = digit
    step = _STEPS[direction] * speed
    return np.stack([np.roll(placed, tuple(np.asarray(start) + f * step), axis=(0, 1))
                     for f in range(frames)])


def example(config: MovingDigitsConfig, digits: np.ndarray, digit_labels: np.ndarray,
            split: str, index: int, direction: int) -> dict:
    """Clip `index` of `split`: a digit drawn from `digits` `[n, 8, 8]` (the split's images)."""
    rng = np.random.default_rng((config.seed, SPLITS.index(split), index))
    choice = int(rng.integers(len(digits)))
    digit = np.kron(digits[choice], np.ones((config.digit_scale,) * 2, np.uint8))
    start = rng.integers(config.canvas, size=2)
    speed = int(rng.integers(config.min_speed, config.max_speed + 1))
    clip = render(digit, (int(start[0]), int(start[1])), direction, speed, config.frames,
                  config.canvas)
    return {"video": clip[..., None], "label": direction, "digit": int(digit_labels[choice]),
            "speed": speed, "start": start.astype(np.int32)}


class MovingDigits(tfds.core.GeneratorBasedBuilder):
    """Handwritten digits moving on a canvas: which way do they move?"""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Configs tiny, small, medium; directions right/left/down/up."}
    BUILDER_CONFIGS = [
        MovingDigitsConfig(name="tiny", description="Tests: 4 frames of 8 x 8, 64/32/32.",
                           frames=4, canvas=8, num_train=64, num_validation=32, num_test=32),
        MovingDigitsConfig(name="small", description="8 frames of 16 x 16, speed 4, "
                           "3000/500/500.", frames=8, canvas=16, min_speed=4, max_speed=4),
        MovingDigitsConfig(name="medium", description="16 frames of 32 x 32, digits 16 x 16, "
                           "6000/1000/1000.", frames=16, canvas=32, digit_scale=2, max_speed=3,
                           num_train=6_000, num_validation=1_000, num_test=1_000),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "small"

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(
                    shape=(config.frames, config.canvas, config.canvas, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=DIRECTIONS),
                "digit": tfds.features.ClassLabel(num_classes=10),
                "speed": tfds.features.Scalar(dtype=np.int32),
                "start": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            }),
            supervised_keys=("video", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated from the installed scikit-learn's digits.
        config = self.builder_config
        if 8 * config.digit_scale > config.canvas:
            raise ValueError(f"moving_digits/{config.name}: digits of {8 * config.digit_scale} "
                             f"pixels do not fit the canvas of {config.canvas}")
        if not 1 <= config.min_speed <= config.max_speed < config.canvas / 2:
            raise ValueError(f"moving_digits/{config.name}: speeds {config.min_speed}.."
                             f"{config.max_speed} must be >= 1 and below half the canvas "
                             f"({config.canvas})")
        images, labels = sklearn_digits.images_and_labels()
        indices = sklearn_digits.split_indices(config.seed)
        sizes = (config.num_train, config.num_validation, config.num_test)
        return {split: self._generate_examples(split, n, images[indices[split]],
                                               labels[indices[split]])
                for split, n in zip(SPLITS, sizes)}

    def _generate_examples(self, split: str, n: int, digits: np.ndarray,
                           digit_labels: np.ndarray) -> Iterator[tuple[int, dict]]:
        config = self.builder_config
        rng = np.random.default_rng((config.seed, SPLITS.index(split)))
        directions = rng.permutation(np.arange(n) % len(DIRECTIONS))
        for index in range(n):
            yield index, example(config, digits, digit_labels, split, index,
                                 int(directions[index]))


SPEC = DatasetSpec(
    builder=builder_of_configs(MovingDigits),
    representations={"video": representations.clips},
    default="video",
)
