"""Image crops for datasets of images of any size: hand-computed crops, the Inception crop's
determinism and flips, and `imagenet2012` (mock data) served at a fixed size."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attnx import data
from attnx.data import image_ops


def _coordinates(h: int, w: int) -> np.ndarray:
    """uint8 `[h, w, 3]`: channel 0 the row, channel 1 the column, channel 2 constant."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.uint8)


def test_eval_crop_is_the_central_square_after_resizing_the_shorter_side():
    image = _coordinates(16, 24)  # shorter side 16 = round(14 / 0.875): no resize
    np.testing.assert_array_equal(image_ops.eval_crop(image, 14), image[1:15, 5:19])
    wide = image_ops.eval_crop(_coordinates(32, 48), 14)  # halved, then the same square
    assert wide.shape == (14, 14, 3) and (wide[..., 2] == 7).all()
    np.testing.assert_allclose(wide[..., 1].astype(float).mean(), 2 * 11.5 + 0.5, atol=0.6)


def test_train_crop_is_a_function_of_the_generator_and_flips_half_the_time(monkeypatch):
    image = _coordinates(40, 30)
    first = image_ops.train_crop(image, 12, np.random.default_rng([0, 3]))
    again = image_ops.train_crop(image, 12, np.random.default_rng([0, 3]))
    other = image_ops.train_crop(image, 12, np.random.default_rng([0, 4]))
    assert first.shape == (12, 12, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # The whole image as the only window: the crop is the resized image, flipped or not.
    monkeypatch.setattr(image_ops, "INCEPTION_AREA", (1.0, 1.0))
    monkeypatch.setattr(image_ops, "INCEPTION_RATIO", (30 / 40, 30 / 40))
    whole = image_ops.resize(image, 12, 12)
    flips = 0
    for seed in range(200):
        crop = image_ops.train_crop(image, 12, np.random.default_rng(seed))
        flipped = np.array_equal(crop, whole[:, ::-1])
        assert flipped or np.array_equal(crop, whole)
        flips += flipped
    assert 70 < flips < 130


def test_bad_images_and_sizes_are_value_errors():
    with pytest.raises(ValueError, match="uint8"):
        image_ops.eval_crop(np.zeros((4, 4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="image_size"):
        image_ops.eval_crop(np.zeros((4, 4, 3), np.uint8), 0)


def test_imagenet_of_any_size_is_served_at_image_size():
    config = data.default_data_config(name="imagenet2012", representation="image",
                                      image_size=16)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        source = tfds.builder("imagenet2012").as_data_source("validation")
        records = [source[i] for i in range(4)]
        evaluation = next(ds.eval_batches("validation", global_batch_size=4))
        train = [ds.train_batch(p, global_batch_size=4) for p in (0, 0, 2)]
        with pytest.raises(ValueError, match="image_size"):
            data.build(data.default_data_config(name="imagenet2012", representation="image"),
                       seed=0)
    assert ds.info.image_shape == (16, 16, 3) and ds.info.num_classes == 1000
    assert len({r["image"].shape for r in records}) > 1  # the mock images vary in size
    for row, record in enumerate(records):
        expected = image_ops.eval_crop(np.asarray(record["image"]), 16) / 255.0
        np.testing.assert_allclose(evaluation["image"][row], expected, rtol=1e-6)
    np.testing.assert_array_equal(train[0]["image"], train[1]["image"])  # replays on resume
    assert train[0]["image"].shape == (4, 16, 16, 3)
    assert not np.array_equal(train[0]["image"], train[2]["image"])


def test_randaugment_ops_by_hand():
    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_ops.apply_op(image, "identity", 15), image)
    np.testing.assert_array_equal(image_ops.apply_op(image, "solarize", 10), 255 - image)
    half = np.where(image >= 128, 255 - image, image)
    np.testing.assert_array_equal(image_ops.apply_op(image, "solarize", 5), half)
    np.testing.assert_array_equal(image_ops.apply_op(image, "posterize", 10), image & 0xF0)
    darker = image_ops.apply_op(image, "brightness", 10, sign=-1.0)  # factor 0.1
    assert np.abs(darker.astype(float) - 0.1 * image).max() <= 1.0
    # Shift left by 150/331 * level * width = 5 pixels: level = 5 * 331 / (150 * 20).
    shifted = image_ops.apply_op(image, "translate_x", 10 * 5 * 331 / 3000)
    np.testing.assert_array_equal(shifted[:, :15], image[:, 5:])
    assert (shifted[:, 15:] == 128).all()
    np.testing.assert_array_equal(image_ops.apply_op(image, "rotate", 0), image)
    gray = image[..., :1]
    assert image_ops.apply_op(gray, "shear_x", 15).shape == (12, 20, 1)
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        image_ops.apply_op(image, "invert", 5)


def test_randaugment_is_a_function_of_the_generator():
    image = _coordinates(16, 16)
    ops = [image_ops.randaugment(image, 2, 15, np.random.default_rng(s)) for s in (1, 1, 2)]
    np.testing.assert_array_equal(ops[0], ops[1])
    assert ops[0].shape == image.shape and ops[0].dtype == np.uint8
    np.testing.assert_array_equal(image_ops.randaugment(image, 0, 15, np.random.default_rng(3)),
                                  image)


def test_randaugment_in_training_only():
    config = data.default_data_config(name="cifar10", eval_split="test", representation="image",
                                      randaugment_layers=2, randaugment_magnitude=15.0)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.build(config, seed=0)
        source = tfds.builder("cifar10").as_data_source("test")
        evaluation = next(ds.eval_batches("test", global_batch_size=4))
        train = [ds.train_batch(p, global_batch_size=4) for p in (1, 1)]
        train_source = tfds.builder("cifar10").as_data_source("train")
        plain = np.stack([train_source[int(i)]["image"]
                          for i in ds.train_indices(1, global_batch_size=4)]) / 255.0
        with pytest.raises(ValueError, match="randaugment_layers"):
            data.build(data.default_data_config(name="cifar10", representation="image",
                                                randaugment_layers=-1), seed=0)
        expected = np.stack([source[i]["image"] for i in range(4)]) / 255.0
    np.testing.assert_allclose(evaluation["image"], expected, rtol=1e-6)
    np.testing.assert_array_equal(train[0]["image"], train[1]["image"])
    assert train[0]["image"].shape == (4, 32, 32, 3)
    changed = [not np.allclose(a, b) for a, b in zip(train[0]["image"], plain)]
    assert sum(changed) >= 3, changed  # 2 ops of 14, identity among them: rarely untouched


def _square_symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The 8 images the square's symmetries make of `image` [S, S, C], by index arithmetic: the
    pixel at (r, c) of each comes from the (row, column) the map below names."""
    s = image.shape[0] - 1
    maps = [lambda r, c: (r, c), lambda r, c: (c, s - r), lambda r, c: (s - r, s - c),
            lambda r, c: (s - c, r), lambda r, c: (c, r), lambda r, c: (r, s - c),
            lambda r, c: (s - c, s - r), lambda r, c: (s - r, c)]
    rows, cols = np.meshgrid(np.arange(s + 1), np.arange(s + 1), indexing="ij")
    return [image[m(rows, cols)] for m in maps]


def test_dihedral_draws_each_symmetry_of_the_square():
    image = (np.arange(5 * 5 * 2).reshape(5, 5, 2) % 251).astype(np.uint8)  # no symmetry
    expected = _square_symmetries(image)
    assert len({e.tobytes() for e in expected}) == 8
    drawn = [image_ops.dihedral(image, np.random.default_rng([1, i])) for i in range(64)]
    found = {next(k for k, e in enumerate(expected) if np.array_equal(d, e)) for d in drawn}
    assert found == set(range(8))
    assert all(d.dtype == np.uint8 and d.shape == image.shape for d in drawn)
    np.testing.assert_array_equal(image_ops.dihedral(image, np.random.default_rng([1, 0])),
                                  drawn[0])
    with pytest.raises(ValueError, match=r"square images \[S, S, C\], got \(5, 4, 2\)"):
        image_ops.dihedral(image[:, :4], np.random.default_rng(0))


def test_dihedral_augment_turns_train_images_only(data_dir):
    def tiny(**fields):
        return data.build(data.default_data_config(
            name="pathfinder", builder_config="tiny", data_dir=data_dir, **fields), seed=0)

    ds, plain = tiny(representation="image", dihedral_augment=True), tiny(representation="image")
    train = ds.train_batch(2, global_batch_size=8)
    np.testing.assert_array_equal(train["image"], ds.train_batch(2, global_batch_size=8)["image"])
    unturned = plain.train_batch(2, global_batch_size=8)
    np.testing.assert_array_equal(train["label"], unturned["label"])
    for turned, original in zip(train["image"], unturned["image"]):
        assert any(np.array_equal(turned, s) for s in _square_symmetries(original))
    assert any(not np.array_equal(a, b) for a, b in zip(train["image"], unturned["image"]))
    evaluation = next(ds.eval_batches("validation", global_batch_size=8))
    np.testing.assert_array_equal(
        evaluation["image"], next(plain.eval_batches("validation", global_batch_size=8))["image"])
    with pytest.raises(ValueError, match=r"data.dihedral_augment=True augments images, but "
                                         r"pathfinder is served as 'tokens'"):
        tiny(seq_len=1024, dihedral_augment=True)
