"""The `moving_digits` builder: the motion the label names, balance, the digit split, determinism,
and how the pipeline serves it (the `tiny` config)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attnx import data
from attnx.data import moving_digits, sklearn_digits


def test_render_moves_the_digit_on_a_torus_hand_computed():
    digit = np.array([[7, 0], [0, 9]], np.uint8)
    clip = moving_digits.render(digit, (1, 3), direction=0, speed=2, frames=3, canvas=4)
    assert clip.shape == (3, 4, 4)
    # Frame 0: top-left corner at row 1, column 3; moving right by 2 wraps to column 1, then 3.
    assert (clip[0, 1, 3], clip[0, 2, 0]) == (7, 9)
    assert (clip[1, 1, 1], clip[1, 2, 2]) == (7, 9)
    assert (clip[2, 1, 3], clip[2, 2, 0]) == (7, 9)
    assert all(frame.sum() == 16 for frame in clip)
    up = moving_digits.render(digit, (0, 0), direction=3, speed=1, frames=2, canvas=4)
    assert (up[1, 3, 0], up[1, 0, 1]) == (7, 9)


@pytest.fixture(scope="module")
def tiny(data_dir):
    builder = moving_digits.MovingDigits(config="tiny", data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    return builder


def test_clips_move_as_labelled_and_labels_are_balanced(tiny):
    source = tiny.as_data_source("train")
    labels = []
    for index in range(len(source)):
        record = source[index]
        clip, direction = record["video"][..., 0], int(record["label"])
        step = moving_digits._STEPS[direction] * int(record["speed"])
        for f in range(1, clip.shape[0]):
            np.testing.assert_array_equal(clip[f], np.roll(clip[0], tuple(f * step), (0, 1)))
        labels.append(direction)
    assert np.bincount(labels).tolist() == [16, 16, 16, 16]
    # Regenerated from its seed, a clip is the stored one.
    again = moving_digits.example(tiny.builder_config, *_digits("train"), "train", 3, labels[3])
    record = source[3]
    np.testing.assert_array_equal(again["video"], record["video"])
    assert (again["digit"], again["speed"]) == (record["digit"], record["speed"])


def _digits(split: str):
    images, labels = sklearn_digits.images_and_labels()
    index = sklearn_digits.split_indices(0)[split]
    return images[index], labels[index]


def test_test_clips_move_test_digits(tiny):
    images, _ = _digits("test")
    record = tiny.as_data_source("test")[0]
    frame = record["video"][0, ..., 0]
    start = record["start"]
    digit = np.roll(frame, tuple(-start), (0, 1))[:8, :8]
    assert any(np.array_equal(digit, image) for image in images)


def test_served_as_clips_with_a_frame_mask(tiny, data_dir):
    config = data.default_data_config(name="moving_digits", builder_config="tiny",
                                      image_key="video", data_dir=data_dir)
    ds = data.build(config, seed=0)
    assert (ds.info.kind, ds.info.clip_shape, ds.info.num_classes) == (
        "video_classification", (4, 8, 8, 1), 4)
    batch = ds.train_batch(0, global_batch_size=8)
    assert batch["video"].shape == (8, 4, 8, 8, 1) and batch["frame_mask"].all()
    assert 0.0 <= batch["video"].min() and batch["video"].max() <= 1.0
    one_frame = data.build(data.default_data_config(
        name="moving_digits", builder_config="tiny", image_key="video", data_dir=data_dir,
        num_frames=1), seed=0)
    assert one_frame.info.clip_shape == (1, 8, 8, 1)
    with pytest.raises(ValueError, match="data.image_key='image' is not a feature of "
                                         "moving_digits"):
        data.build(data.default_data_config(name="moving_digits", builder_config="tiny",
                                            data_dir=data_dir), seed=0)
    assert isinstance(tiny.info.features["label"], tfds.features.ClassLabel)
    assert tiny.info.features["label"].names == list(moving_digits.DIRECTIONS)
