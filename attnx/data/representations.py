"""Representations that several datasets share, and the row sources behind them.

Each representation is a function `(prepared builder, config.data) -> Served` (see `spec.py`) that
checks the config fits the dataset and reads its feature keys from the config (`data.text_key`,
`data.label_key`, `data.image_key`). Batches, `b` rows, index -1 a weight-0 padding row:

- `byte_lm(separator)`, 'lm': the split's `text_key` documents, each followed by `separator`,
  concatenated into one byte stream (vocab 256) cut into non-overlapping windows of `seq_len + 1`
  bytes: `{'inputs', 'targets': int32 [b, T], 'weights': float32 [b, T]}`, targets = inputs
  shifted by one. Evaluation also sees the stream's last, partial window, its missing targets
  weighted 0.
- `text_tokens`, `image_tokens`, 'classification': `{'inputs': int32 [b, T], 'mask': bool
  [b, T], 'label': int32 [b], 'weights': float32 [b]}`, truncated or padded to T with id 0; text
  is its bytes + 1, an image `[H, W, C]` its grayscale intensities + 1 in raster order (vocab 257).
- `images`, 'image_classification': `{'image': float32 [b, H, W, C] in [0, 1], 'label',
  'weights'}`; uint8 pixels are divided by 255, float ones kept. With `data.image_size` = S,
  images of any size are cut to `[S, S, C]` (random resized crop + flip to train, central crop
  to evaluate: `image_ops`); `data.randaugment_layers` > 0 adds RandAugment to train images,
  `data.dihedral_augment` a random rotation by 90 degrees and reflection (`image_ops.dihedral`).
- `clips`, 'video_classification': `{'video': float32 [b, T, H, W, C] in [0, 1], 'frame_mask':
  bool [b, T], 'label', 'weights'}` with T = `data.num_frames` (None: the clips' fixed length);
  longer clips keep their first T frames, shorter ones are padded with zero frames, masked False.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import image_ops
from attnx.data.spec import Batch, DataInfo, Feature, Representation, RowSource, Served

# ITU-R BT.601 luma weights (as tf.image.rgb_to_grayscale) in units of 1e-4, for exact rounding.
_GRAY_WEIGHTS = np.array([2989, 5870, 1140], np.int64)


# ----------------------------------------------------------------------------- features


def lm_features(seq_len: int) -> dict[str, Feature]:
    """Features of 'lm' batches of windows of `seq_len` tokens."""
    tokens = Feature("int32", (seq_len,))
    return {"inputs": tokens, "targets": tokens, "weights": Feature("float32", (seq_len,))}


def classification_features(seq_len: int) -> dict[str, Feature]:
    """Features of 'classification' batches of `seq_len` tokens."""
    return {
        "inputs": Feature("int32", (seq_len,)),
        "mask": Feature("bool", (seq_len,)),
        "label": Feature("int32", ()),
        "weights": Feature("float32", ()),
    }


def seq2seq_features(seq_len: int, target_len: int) -> dict[str, Feature]:
    """Features of 'seq2seq' batches: encoder length `seq_len`, decoder length `target_len`."""
    return {
        "inputs": Feature("int32", (seq_len,)),
        "inputs_mask": Feature("bool", (seq_len,)),
        "decoder_inputs": Feature("int32", (target_len,)),
        "targets": Feature("int32", (target_len,)),
        "weights": Feature("float32", (target_len,)),
    }


def image_features(shape: tuple[int, int, int]) -> dict[str, Feature]:
    """Features of 'image_classification' batches of `(H, W, C)` images."""
    return {
        "image": Feature("float32", shape),
        "label": Feature("int32", ()),
        "weights": Feature("float32", ()),
    }


def video_features(shape: tuple[int, int, int, int]) -> dict[str, Feature]:
    """Features of 'video_classification' batches of `(T, H, W, C)` clips."""
    return {
        "video": Feature("float32", shape),
        "frame_mask": Feature("bool", shape[:1]),
        "label": Feature("int32", ()),
        "weights": Feature("float32", ()),
    }


# ----------------------------------------------------------------------------- row sources


class Windows:
    """Non-overlapping windows of `seq_len + 1` bytes of a stream `[n]`; with `partial_tail`, the
    last, shorter window too (padded, its missing targets weighted 0)."""

    def __init__(self, stream: np.ndarray, seq_len: int, partial_tail: bool) -> None:
        self._stream = stream
        self._width = seq_len + 1
        if partial_tail:  # Every window that holds at least one target.
            self._len = -(-(len(stream) - 1) // self._width) if len(stream) > 1 else 0
        else:
            self._len = len(stream) // self._width

    def __len__(self) -> int:
        return self._len

    def rows(self, indices: np.ndarray) -> Batch:
        positions = (indices * self._width)[:, None] + np.arange(self._width)
        valid = (indices[:, None] >= 0) & (positions < len(self._stream))
        windows = np.where(valid, self._stream[np.where(valid, positions, 0)], 0).astype(np.int32)
        return {
            "inputs": windows[:, :-1],
            "targets": windows[:, 1:],
            "weights": valid[:, 1:].astype(np.float32),
        }


class TokenClassification:
    """Records with a label and a feature that `encode` turns into ids, truncated and padded to
    `seq_len`."""

    def __init__(
        self, source: Any, encode: Callable[[dict], np.ndarray], label_key: str, seq_len: int
    ) -> None:
        self._source = source
        self._encode = encode
        self._label_key = label_key
        self._seq_len = seq_len

    def __len__(self) -> int:
        return len(self._source)

    def rows(self, indices: np.ndarray) -> Batch:
        inputs = np.zeros((len(indices), self._seq_len), np.int32)
        labels = np.zeros(len(indices), np.int32)
        for row, index in enumerate(indices):
            if index >= 0:
                record = self._source[int(index)]
                ids = self._encode(record)[: self._seq_len]
                inputs[row, : len(ids)] = ids
                labels[row] = int(record[self._label_key])
        return {
            "inputs": inputs,
            "mask": inputs != 0,
            "label": labels,
            "weights": (indices >= 0).astype(np.float32),
        }


class Seq2Seq:
    """`{'inputs', 'targets'}` text records -> encoder inputs, decoder inputs (BOS +
    targets[:-1]) and targets (target + EOS), truncated and padded to `info`'s lengths."""

    def __init__(self, source: Any, info: DataInfo) -> None:
        self._source = source
        self._info = info

    def __len__(self) -> int:
        return len(self._source)

    def rows(self, indices: np.ndarray) -> Batch:
        info = self._info
        inputs = np.zeros((len(indices), info.seq_len), np.int32)
        targets = np.zeros((len(indices), info.target_len), np.int32)
        decoder_inputs = np.zeros_like(targets)
        for row, index in enumerate(indices):
            if index >= 0:
                record = self._source[int(index)]
                ids = info.encode(record["inputs"])[: info.seq_len]
                inputs[row, : len(ids)] = ids
                target = np.append(info.encode(record["targets"]), info.eos_id)
                shifted = np.insert(target[:-1], 0, info.bos_id)
                targets[row, : len(target)] = target[: info.target_len]
                decoder_inputs[row, : len(shifted)] = shifted[: info.target_len]
        return {
            "inputs": inputs,
            "inputs_mask": inputs != 0,
            "decoder_inputs": decoder_inputs,
            "targets": targets,
            "weights": (targets != 0).astype(np.float32),
        }


class Images:
    """Records with a label and an image `[H, W, C]` (`shape`), as floats in [0, 1].

    With `crop` ('train' or 'eval') the records' images may have any size and are cut to
    `shape` by `image_ops.train_crop` or `image_ops.eval_crop`; without, they must already have
    `shape`. `randaugment` = (layers, magnitude) applies `image_ops.randaugment` after the crop
    and `dihedral` then `image_ops.dihedral` (train sources only). The random steps draw from
    (seed, batch position, example): `rows_at`.
    """

    def __init__(
        self, source: Any, image_key: str, label_key: str, shape: tuple[int, int, int],
        crop: str | None = None, randaugment: tuple[int, float] | None = None,
        dihedral: bool = False,
    ) -> None:
        self._source = source
        self._image_key = image_key
        self._label_key = label_key
        self._shape = shape
        self._crop = crop
        self._randaugment = randaugment
        self._dihedral = dihedral
        self._random = crop == "train" or randaugment is not None or dihedral

    def __len__(self) -> int:
        return len(self._source)

    def _image(self, pixels: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if not self._random or rng is None:
            if self._crop is not None:
                pixels = image_ops.eval_crop(np.asarray(pixels), self._shape[0])
            return unit_interval(pixels)
        pixels = np.asarray(pixels)
        if self._crop == "train":
            pixels = image_ops.train_crop(pixels, self._shape[0], rng)
        if self._randaugment is not None:
            pixels = image_ops.randaugment(pixels, *self._randaugment, rng)
        if self._dihedral:
            pixels = image_ops.dihedral(pixels, rng)
        return unit_interval(pixels)

    def rows(self, indices: np.ndarray) -> Batch:
        return self.rows_at(indices, None)

    def rows_at(self, indices: np.ndarray, seed: list[int] | None) -> Batch:
        """`rows`, with random train crops drawn from `np.random.default_rng(seed + [index])`
        (`seed`: the dataset's seed and the batch position; None: evaluation crops)."""
        images = np.zeros((len(indices), *self._shape), np.float32)
        labels = np.zeros(len(indices), np.int32)
        for row, index in enumerate(indices):
            if index >= 0:
                record = self._source[int(index)]
                rng = (np.random.default_rng([*seed, int(index)])
                       if seed is not None and self._random else None)
                images[row] = self._image(record[self._image_key], rng)
                labels[row] = int(record[self._label_key])
        return {"image": images, "label": labels, "weights": (indices >= 0).astype(np.float32)}


class Clips:
    """Records with a label and a clip `[t, H, W, C]`, as float frames in [0, 1], cut or padded
    to `shape[0]` frames with a frame mask (True = a real frame)."""

    def __init__(
        self, source: Any, key: str, label_key: str, shape: tuple[int, int, int, int]
    ) -> None:
        self._source = source
        self._key = key
        self._label_key = label_key
        self._shape = shape

    def __len__(self) -> int:
        return len(self._source)

    def rows(self, indices: np.ndarray) -> Batch:
        videos = np.zeros((len(indices), *self._shape), np.float32)
        frame_mask = np.zeros((len(indices), self._shape[0]), bool)
        labels = np.zeros(len(indices), np.int32)
        for row, index in enumerate(indices):
            if index >= 0:
                record = self._source[int(index)]
                frames = unit_interval(record[self._key][: self._shape[0]])
                videos[row, : len(frames)] = frames
                frame_mask[row, : len(frames)] = True
                labels[row] = int(record[self._label_key])
        return {
            "video": videos,
            "frame_mask": frame_mask,
            "label": labels,
            "weights": (indices >= 0).astype(np.float32),
        }


# ----------------------------------------------------------------------------- helpers


def unit_interval(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 / 255; float pixels (taken to be in [0, 1]) -> float32."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return pixels.astype(np.float32)


def gray_ids(image: np.ndarray) -> np.ndarray:
    """Image `[H, W, C]` uint8 -> grayscale intensity (rounded half up) + 1 `[H * W]`, raster
    order (C = 1 is kept as it is, C = 3 weighted by ITU-R BT.601)."""
    image = np.asarray(image, np.int64)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = (image @ _GRAY_WEIGHTS + 5000) // 10000
    return image.reshape(-1).astype(np.int32) + 1


def text_bytes(value: str | bytes) -> bytes:
    """A TFDS text feature as bytes (prepared data gives bytes, mock data gives str)."""
    return value.encode() if isinstance(value, str) else value


def byte_stream(source: Any, key: str, separator: bytes) -> np.ndarray:
    """All records' `key` bytes, each followed by `separator`, as one uint8 stream `[n]`."""
    data = b"".join(text_bytes(source[i][key]) + separator for i in range(len(source)))
    return np.frombuffer(data, np.uint8)


def require_feature(builder: tfds.core.DatasetBuilder, field: str, key: str) -> Any:
    """The TFDS feature `key` (the value of `data.<field>`); ValueError listing the dataset's
    features if it has none of that name."""
    features = builder.info.features
    if key not in features:
        raise ValueError(
            f"data.{field}={key!r} is not a feature of {builder.name}; "
            f"features: {sorted(features.keys())}"
        )
    return features[key]


def num_classes(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> int:
    """`data.num_classes`, or the class count of the dataset's `data.label_key` ClassLabel.

    Raises:
      ValueError: no such feature, or it is not a ClassLabel and `data.num_classes` is None.
    """
    label = require_feature(builder, "label_key", config.label_key)
    if config.num_classes is not None:
        return config.num_classes
    if not isinstance(label, tfds.features.ClassLabel):
        raise ValueError(
            f"data.num_classes must be set: {builder.name}'s {config.label_key!r} feature "
            "is not a ClassLabel"
        )
    return label.num_classes


def _pixels(
    builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict, rank: int,
    representation: str,
) -> tuple[int | None, ...]:
    """The per-example shape of the `data.image_key` feature, checked to have `rank` dims and
    uint8 or float pixels for `representation`."""
    feature = require_feature(builder, "image_key", config.image_key)
    shape = tuple(feature.shape)
    wanted = {3: "images [H, W, C]", 4: "clips [T, H, W, C]"}
    if len(shape) != rank:
        raise ValueError(
            f"data.representation={representation!r} reads {wanted[rank]} but "
            f"data.image_key={config.image_key!r} of {builder.name} has shape {shape}; the "
            f"representations of pixel arrays: 'tokens' and 'image' for {wanted[3]}, 'video' "
            f"for {wanted[4]}"
        )
    dtype = np.dtype(feature.np_dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"data.image_key={config.image_key!r} of {builder.name} holds {dtype} pixels; "
            "expected uint8 or float"
        )
    return shape


def _static(shape: tuple[int | None, ...], what: str, builder: tfds.core.DatasetBuilder,
            config: ml_collections.ConfigDict, remedy: str = "") -> None:
    """ValueError unless every dim of `shape` is known."""
    if None in shape:
        raise ValueError(
            f"data.image_key={config.image_key!r} of {builder.name} has {what} of shape {shape}; "
            f"the pipeline serves them only with a fixed size{remedy}"
        )


# ----------------------------------------------------------------------------- representations


def byte_lm(separator: bytes) -> Representation:
    """The 'lm' representation of a dataset of `data.text_key` documents (see the module
    docstring); `separator` follows each document in the stream."""

    def serve(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
        require_feature(builder, "text_key", config.text_key)
        info = DataInfo(
            kind="lm", features=lm_features(config.seq_len), vocab_size=256, pad_id=0,
            seq_len=config.seq_len,
        )

        def open_split(source: Any, split: str, train: bool) -> RowSource:
            stream = byte_stream(source, config.text_key, separator)
            if train and len(stream) <= config.seq_len:
                raise ValueError(
                    f"split {split!r} of {config.name} holds {len(stream)} bytes, fewer than one "
                    f"window of data.seq_len + 1 = {config.seq_len + 1}"
                )
            return Windows(stream, config.seq_len, partial_tail=not train)

        return Served(info, open_split)

    return serve


def _byte_classification_info(
    builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict
) -> DataInfo:
    """'classification' over ids byte + 1 (vocab 257, 0 = padding)."""
    return DataInfo(
        kind="classification", features=classification_features(config.seq_len),
        vocab_size=257, pad_id=0, num_classes=num_classes(builder, config),
        seq_len=config.seq_len, byte_offset=1,
    )


def text_tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'classification' of `data.text_key` texts as their bytes + 1."""
    info = _byte_classification_info(builder, config)
    require_feature(builder, "text_key", config.text_key)

    def encode(record: dict) -> np.ndarray:
        return info.encode(text_bytes(record[config.text_key]))

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return TokenClassification(source, encode, config.label_key, config.seq_len)

    return Served(info, open_split)


def image_tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'classification' of `data.image_key` images `[H, W, C]` as grayscale intensities + 1."""
    info = _byte_classification_info(builder, config)
    _pixels(builder, config, 3, "tokens")

    def encode(record: dict) -> np.ndarray:
        return gray_ids(record[config.image_key])

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return TokenClassification(source, encode, config.label_key, config.seq_len)

    return Served(info, open_split)


def images(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'image_classification' of `data.image_key` images `[H, W, C]`: as they are (a fixed
    size), or with `data.image_size` = S cut to `[S, S, C]` whatever their size (training:
    Inception's random resized crop and a flip; evaluation: the central crop after resizing the
    shorter side to S / 0.875; see `image_ops`)."""
    shape = _pixels(builder, config, 3, "image")
    size = config.get("image_size")
    layers, magnitude = config.get("randaugment_layers", 0), config.get("randaugment_magnitude")
    uint8 = np.dtype(require_feature(builder, "image_key", config.image_key).np_dtype) == np.uint8
    if layers < 0 or (layers and (magnitude is None or magnitude < 0)):
        raise ValueError(f"data.randaugment_layers must be >= 0 (got {layers}) and "
                         f"data.randaugment_magnitude >= 0 (got {magnitude})")
    if layers and (shape[-1] not in (1, 3) or not uint8):
        raise ValueError(f"data.randaugment_layers={layers} augments uint8 images with 1 or 3 "
                         f"channels; data.image_key={config.image_key!r} of {builder.name} has "
                         f"shape {shape}")
    dihedral = bool(config.get("dihedral_augment", False))
    if size is None:
        _static(shape, "images", builder, config,
                ": set data.image_size to crop them to one (e.g. 224)")
        if dihedral and shape[0] != shape[1]:
            raise ValueError(f"data.dihedral_augment turns square images; data.image_key="
                             f"{config.image_key!r} of {builder.name} has shape {shape} (set "
                             "data.image_size to crop them square)")
    else:
        if size < 1:
            raise ValueError(f"data.image_size must be >= 1 or None, got {size}")
        if shape[-1] not in (1, 3) or not uint8:
            raise ValueError(f"data.image_size={size} crops uint8 images with 1 or 3 channels; "
                             f"data.image_key={config.image_key!r} of {builder.name} has shape "
                             f"{shape}")
        shape = (size, size, shape[-1])
    info = DataInfo(
        kind="image_classification", features=image_features(shape),
        num_classes=num_classes(builder, config),
    )

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        crop = None if size is None else ("train" if train else "eval")
        augment = (layers, magnitude) if layers and train else None
        return Images(source, config.image_key, config.label_key, shape, crop, augment,
                      dihedral and train)

    return Served(info, open_split)


def clips(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'video_classification' of `data.image_key` clips `[t, H, W, C]`, `data.num_frames` frames
    per example (None: the clips' own length, which must then be fixed)."""
    length, *frame = _pixels(builder, config, 4, "video")
    _static(tuple(frame), "frames", builder, config)
    frames = length if config.num_frames is None else config.num_frames
    if frames is None:
        raise ValueError(
            f"data.num_frames must be set: the clips of {builder.name}'s "
            f"{config.image_key!r} feature vary in length"
        )
    if frames < 1:
        raise ValueError(f"data.num_frames must be >= 1, got {frames}")
    shape = (frames, *frame)
    info = DataInfo(
        kind="video_classification", features=video_features(shape),
        num_classes=num_classes(builder, config),
    )

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return Clips(source, config.image_key, config.label_key, shape)

    return Served(info, open_split)
