"""The `sklearn_digits` builder: splits, determinism, upsampling, and how the pipeline serves it."""

from __future__ import annotations

import numpy as np
import pytest

from attnx import data
from attnx.data import sklearn_digits


def test_splits_partition_the_1797_images_deterministically():
    first, again = sklearn_digits.split_indices(0), sklearn_digits.split_indices(0)
    sizes = [len(first[s]) for s in sklearn_digits.SPLITS]
    assert sizes == [1297, 250, 250]
    everything = np.concatenate([first[s] for s in sklearn_digits.SPLITS])
    np.testing.assert_array_equal(np.sort(everything), np.arange(1797))
    for split in sklearn_digits.SPLITS:
        np.testing.assert_array_equal(first[split], again[split])
    assert not np.array_equal(first["test"], sklearn_digits.split_indices(1)["test"])


@pytest.fixture(scope="module")
def served(data_dir):
    out = {}
    for name, representation, seq_len in (("32x32", "image", 256), ("8x8", "tokens", 64)):
        config = data.default_data_config(name="sklearn_digits", builder_config=name,
                                          representation=representation, seq_len=seq_len,
                                          data_dir=data_dir)
        out[name] = data.build(config, seed=0)
    return out


def test_served_as_images_and_as_tokens(served):
    images, tokens = served["32x32"], served["8x8"]
    assert images.info.kind == "image_classification" and images.info.num_classes == 10
    assert images.info.image_shape == (32, 32, 1)
    batch = images.train_batch(0, global_batch_size=8)
    assert batch["image"].shape == (8, 32, 32, 1) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert tokens.info.kind == "classification" and tokens.info.seq_len == 64
    # The same test images: 8 x 8 tokens (grey + 1) are the 32 x 32 images' 4 x 4 blocks.
    big = next(iter(images.eval_batches("test", global_batch_size=4, max_batches=1)))
    small = next(iter(tokens.eval_batches("test", global_batch_size=4, max_batches=1)))
    np.testing.assert_array_equal(big["label"], small["label"])
    pixels = (small["inputs"] - 1).reshape(4, 8, 8, 1).astype(np.float32) / 255
    np.testing.assert_allclose(big["image"][:, ::4, ::4], pixels)
    np.testing.assert_array_equal(big["image"][:, 1::4, 2::4], big["image"][:, ::4, ::4])
    images_np, labels = sklearn_digits.images_and_labels()
    index = sklearn_digits.split_indices(0)["test"][0]
    np.testing.assert_array_equal(small["inputs"][0] - 1, images_np[index].reshape(-1))
    assert small["label"][0] == labels[index]


def test_tokens_must_hold_the_whole_image(data_dir):
    config = data.default_data_config(name="sklearn_digits", builder_config="32x32",
                                      representation="tokens", seq_len=256, data_dir=data_dir)
    with pytest.raises(ValueError, match="seq_len=256 would truncate"):
        data.build(config, seed=0)
