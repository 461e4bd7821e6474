"""The input pipeline: a TFDS dataset by name -> deterministic numpy batches.

`build(config.data, seed=...)` prepares the dataset on first use (`array_record`, read back through
`builder.as_data_source`, so no TensorFlow is needed) and returns a `Dataset` whose batches are pure
functions of `(seed, position)`:

- `train_batch(position, ...)` is global batch number `position` of an infinite stream that visits
  the train split in a fresh permutation every epoch, the permutation seeded by `(seed, epoch)`;
  nothing is carried from one call to the next, so a run resumed at step p sees what it would have.
- `eval_batches(split, ...)` is one unshuffled pass; the last batch is padded with weight-0 rows.
- Each process gets its contiguous slice of rows of the global batch.

Tasks and batches (`b` local rows):
- `lm` (pystdlib, textfile, or a TFDS dataset with a text feature and no label, e.g. lm1b): the
  split's documents are concatenated into one byte stream (vocab 256; TFDS documents end with
  b'\\n') and cut into non-overlapping windows of `seq_len + 1` bytes:
  `{'inputs', 'targets': int32 [b, T], 'weights': float32 [b, T]}`, targets = inputs shifted by
  one. Evaluation also sees the stream's last, partial window, its missing targets weighted 0.
- `classification` (listops, pathfinder, or a TFDS dataset with a label and a text or image
  feature, e.g. imdb_reviews, cifar10): `{'inputs': int32 [b, T], 'mask': bool [b, T],
  'label': int32 [b], 'weights': float32 [b]}`, truncated or padded to T with id 0. Text is
  bytes + 1 (vocab 257), an image (pathfinder's too) is its grayscale intensities + 1 in raster
  order (vocab 257), listops has its own tokens.
- `seq2seq` (seq2seq_digits): `{'inputs': int32 [b, Ts], 'inputs_mask': bool [b, Ts],
  'decoder_inputs': int32 [b, Tt] (BOS + targets[:-1]), 'targets': int32 [b, Tt] (target + EOS),
  'weights': float32 [b, Tt]}`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import duplication, listops, pathfinder, pystdlib, seq2seq_digits, textfile

Batch = dict[str, np.ndarray]

# The embedded datasets and their task; any other name must be a registered TFDS dataset.
EMBEDDED = {
    "pystdlib": "lm",
    "textfile": "lm",
    "listops": "classification",
    "pathfinder": "classification",
    "seq2seq_digits": "seq2seq",
    "duplication": "lm",
}
# ITU-R BT.601 luma weights (as tf.image.rgb_to_grayscale) in units of 1e-4, for exact rounding.
_GRAY_WEIGHTS = np.array([2989, 5870, 1140], np.int64)
# Permutations kept per Dataset: a batch can straddle an epoch boundary.
_PERMUTATION_CACHE = 4


def default_data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The data fields every config carries (defaults: pystdlib, windows of 256 bytes).

    Raises:
      ValueError: an override names a field that does not exist.
    """
    config = ml_collections.ConfigDict()
    config.name = "pystdlib"  # pystdlib | textfile | listops | pathfinder | seq2seq_digits |
    #                           duplication | TFDS
    config.builder_config = ml_collections.FieldReference(None, field_type=str)  # e.g. 'tiny'
    config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
    config.path = ml_collections.FieldReference(None, field_type=str)  # textfile's file or dir
    config.seq_len = 256  # LM window / classification length / encoder length
    config.target_len = ml_collections.FieldReference(None, field_type=int)  # seq2seq decoder
    config.train_split = "train"
    config.eval_split = "validation"
    config.test_split = "test"
    config.text_key = "text"  # TFDS feature names
    config.label_key = "label"
    config.image_key = "image"
    config.num_classes = ml_collections.FieldReference(None, field_type=int)  # None: from TFDS
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown data config field {key!r}; fields: {sorted(config)}")
        config[key] = value
    return config


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data.

    Attributes:
      task: 'lm' | 'classification' | 'seq2seq'.
      vocab_size: number of token ids.
      pad_id: padding id (0 everywhere).
      num_classes: classification only.
      seq_len: model input length (LM window T, classification length, seq2seq encoder length).
      target_len: seq2seq decoder length.
      bos_id, eos_id: seq2seq decoder start and end tokens.
      vocab: id -> token for symbol vocabularies (listops, digits); None for byte-level ones.
      separator: how `vocab` tokens are written in text ('' for one character per token).
      byte_offset: byte-level vocabularies: id = byte + byte_offset.
    """

    task: str
    vocab_size: int
    pad_id: int
    num_classes: int | None
    seq_len: int
    target_len: int | None
    bos_id: int | None
    eos_id: int | None
    vocab: tuple[str, ...] | None = None
    separator: str = ""
    byte_offset: int = 0

    # TEMPORARY until the dataset-spec branch lands.
    @property
    def kind(self) -> str:
        return self.task

    image_shape = None

    @property
    def features(self) -> dict:
        return {"lm": dict.fromkeys(("inputs", "targets", "weights")),
                "classification": dict.fromkeys(("inputs", "mask", "label", "weights")),
                "seq2seq": dict.fromkeys(("inputs", "inputs_mask", "decoder_inputs", "targets",
                                          "weights"))}[self.task]

    def encode(self, text: str | bytes) -> np.ndarray:
        """Text -> int32 ids `[n]` (UTF-8 bytes for byte-level vocabularies).

        Raises:
          ValueError: a token that is not in the vocabulary.
        """
        if self.vocab is None:
            data = text.encode() if isinstance(text, str) else text
            return np.frombuffer(data, np.uint8).astype(np.int32) + self.byte_offset
        if isinstance(text, bytes):
            text = text.decode()
        tokens = text.split() if self.separator else list(text)
        ids = {token: i for i, token in enumerate(self.vocab)}
        unknown = sorted({t for t in tokens if t not in ids})
        if unknown:
            raise ValueError(f"tokens {unknown} are not in the vocabulary {self.vocab}")
        return np.array([ids[t] for t in tokens], np.int32)

    def decode(self, ids: np.ndarray) -> str:
        """Ids `[n]` -> text; padding and BOS are dropped and decoding stops at EOS."""
        ids = np.asarray(ids).reshape(-1)
        if self.eos_id is not None and (ids == self.eos_id).any():
            ids = ids[: int(np.argmax(ids == self.eos_id))]
        dropped = [self.pad_id] + ([] if self.bos_id is None else [self.bos_id])
        ids = ids[~np.isin(ids, dropped)]
        if self.vocab is None:
            data = (ids - self.byte_offset).astype(np.uint8).tobytes()
            return data.decode("utf-8", errors="replace")
        return self.separator.join(self.vocab[i] for i in ids)


class _Split(Protocol):
    """The examples of one split, addressable by index."""

    def __len__(self) -> int: ...

    def rows(self, indices: np.ndarray) -> Batch:
        """The batch rows of examples `indices` `[b]`; index -1 gives a weight-0 padding row."""
        ...


class _Windows:
    """Non-overlapping windows of `seq_len + 1` bytes of a stream; with `partial_tail`, the last,
    shorter window too (padded, its missing targets weighted 0)."""

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


class _Classification:
    """Records with a label and a text or image feature, encoded, truncated and padded."""

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


class _Seq2Seq:
    """`{'inputs', 'targets'}` text records -> encoder inputs, decoder inputs and targets."""

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


class Dataset:
    """Deterministic, resumable batches of one dataset (see the module docstring)."""

    def __init__(
        self,
        info: DataInfo,
        open_split: Callable[[str, bool], _Split],
        *,
        seed: int,
        train_split: str,
    ) -> None:
        self.info = info
        self._open_split = open_split
        self._seed = seed
        self._train_split = train_split
        self._splits: dict[tuple[str, bool], _Split] = {}
        self._permutations: dict[int, np.ndarray] = {}
        self._split(train_split, True)  # Fail now, not at the first step, if it is unusable.

    def _split(self, split: str, train: bool) -> _Split:
        if (split, train) not in self._splits:
            examples = self._open_split(split, train)
            if not len(examples):
                raise ValueError(f"split {split!r} has no examples")
            self._splits[split, train] = examples
        return self._splits[split, train]

    def _permutation(self, epoch: int, n: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) >= _PERMUTATION_CACHE:
                del self._permutations[min(self._permutations)]
            rng = np.random.default_rng([self._seed, epoch])
            self._permutations[epoch] = rng.permutation(n)
        return self._permutations[epoch]

    def train_batch(
        self,
        position: int,
        *,
        global_batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Batch:
        """This process's rows of global train batch number `position` (>= 0)."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        local = _local_rows(global_batch_size, process_index, process_count)
        examples = self._split(self._train_split, True)
        epoch, offset = np.divmod(position * global_batch_size + local, len(examples))
        indices = np.empty_like(offset)
        for e in np.unique(epoch):
            indices[epoch == e] = self._permutation(int(e), len(examples))[offset[epoch == e]]
        return examples.rows(indices)

    def eval_batches(
        self,
        split: str,
        *,
        global_batch_size: int,
        max_batches: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[Batch]:
        """One unshuffled pass over `split` (at most `max_batches` batches); rows past the end of
        the split are padding with weight 0. Every process gets the same number of batches."""
        local = _local_rows(global_batch_size, process_index, process_count)
        if max_batches is not None and max_batches < 0:
            raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
        examples = self._split(split, False)
        num_batches = -(-len(examples) // global_batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        for batch in range(num_batches):
            rows = batch * global_batch_size + local
            yield examples.rows(np.where(rows < len(examples), rows, -1))


def _local_rows(global_batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Global row numbers `[global_batch_size // process_count]` of this process's slice."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got {process_index} of {process_count}"
        )
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size must be a positive multiple of process_count={process_count}, "
            f"got {global_batch_size}"
        )
    per_process = global_batch_size // process_count
    return process_index * per_process + np.arange(per_process, dtype=np.int64)


def _builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The TFDS builder that `config.name` (and `builder_config`, `path`) names.

    Raises:
      ValueError: an unknown name, a missing or nonexistent textfile path, a builder_config where
        the dataset derives its own.
    """
    name, data_dir = config.name, config.data_dir
    if name in ("pystdlib", "textfile") and config.builder_config is not None:
        raise ValueError(
            f"data.builder_config must be None for {name} (its config is derived from "
            f"{'the running Python' if name == 'pystdlib' else 'data.path'}), "
            f"got {config.builder_config!r}"
        )
    if name == "pystdlib":
        return pystdlib.Pystdlib(data_dir=data_dir)
    if name == "textfile":
        if config.path is None:
            raise ValueError("data.path must name a file or directory for data.name='textfile'")
        return textfile.Textfile(path=config.path, data_dir=data_dir)
    generated = {"listops": listops.Listops, "pathfinder": pathfinder.Pathfinder,
                 "seq2seq_digits": seq2seq_digits.Seq2seqDigits,
                 "duplication": duplication.Duplication}
    if name in generated:
        builder_cls = generated[name]
        known = [c.name for c in builder_cls.BUILDER_CONFIGS]
        if config.builder_config is not None and config.builder_config not in known:
            raise ValueError(
                f"data.builder_config={config.builder_config!r} is not a config of {name}; "
                f"expected one of {known}"
            )
        return builder_cls(config=config.builder_config, data_dir=data_dir)
    if name.split("/")[0].split(":")[0] not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"unknown dataset data.name={name!r}: expected one of the embedded datasets "
            f"{sorted(EMBEDDED)} or a TFDS dataset name (see tfds.list_builders())"
        )
    return tfds.builder(name, config=config.builder_config, data_dir=data_dir)


def _prepared_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """`_builder(config)`, its data generated (or downloaded) as array_record on first use.

    A lock file beside the data serializes processes that start at once (the processes of a
    multi-process run): one prepares, the others wait and then read its data."""
    builder = _builder(config)
    if builder.is_prepared():
        return builder
    os.makedirs(os.path.dirname(builder.data_dir), exist_ok=True)
    with open(f"{builder.data_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = _builder(config)  # A fresh one sees data prepared while this one waited.
        if not builder.is_prepared():
            config_name = f"/{builder.builder_config.name}" if builder.builder_config else ""
            print(
                f"attnx.data: preparing {builder.name}{config_name} {builder.version} in "
                f"{builder.data_dir} (first use; later runs reuse it)",
                flush=True,
            )
            builder.download_and_prepare(file_format="array_record")
    return builder


def _text(value: str | bytes) -> bytes:
    """A TFDS text feature as bytes (prepared data gives bytes, mock data gives str)."""
    return value.encode() if isinstance(value, str) else value


def _byte_stream(source: Any, key: str, separator: bytes) -> np.ndarray:
    """All records' `key` bytes, each followed by `separator`, as one uint8 stream."""
    data = b"".join(_text(source[i][key]) + separator for i in range(len(source)))
    return np.frombuffer(data, np.uint8)


def _gray_ids(image: np.ndarray) -> np.ndarray:
    """Image `[H, W, C]` uint8 -> grayscale intensity (rounded half up) + 1 `[H * W]`, raster
    order."""
    image = np.asarray(image, np.int64)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = (image @ _GRAY_WEIGHTS + 5000) // 10000
    return image.reshape(-1).astype(np.int32) + 1


def _require_text_key(builder: tfds.core.DatasetBuilder, text_key: str) -> None:
    """Raise ValueError unless the dataset has the feature `text_key`."""
    features = builder.info.features
    if text_key not in features:
        raise ValueError(
            f"data.text_key={text_key!r} is not a feature of {builder.name}; "
            f"features: {sorted(features.keys())}"
        )


def build(data_config: ml_collections.ConfigDict, *, seed: int) -> Dataset:
    """The dataset `data_config` names (see `default_data_config`), prepared on first use.

    Raises:
      ValueError: an unknown dataset, a missing textfile path, a field that does not fit the
        dataset (a feature key it lacks, lengths too short for its examples), a negative seed.
    """
    config = data_config
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if config.seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {config.seq_len}")
    builder = _prepared_builder(config)
    name = builder.name
    task = EMBEDDED.get(name)
    if task is None:  # A TFDS dataset: classification if it has a label, else LM.
        task = "classification" if config.label_key in builder.info.features else "lm"

    def source(split: str) -> Any:
        return builder.as_data_source(split)

    if name == "duplication":  # Token sequences, scored on their second half.
        length = builder.builder_config.length
        if config.seq_len != length:
            raise ValueError(
                f"data.seq_len must equal the length of duplication/{builder.builder_config.name} "
                f"sequences, {length}, got {config.seq_len}"
            )
        info = DataInfo("lm", duplication.vocab_size(builder.builder_config), 0, None, length,
                        None, None, None)

        def open_split(split: str, train: bool) -> _Split:
            return duplication.Rows(source(split), length)

    elif task == "lm":
        _require_text_key(builder, config.text_key)
        separator = b"" if name in EMBEDDED else b"\n"
        info = DataInfo("lm", 256, 0, None, config.seq_len, None, None, None)

        def open_split(split: str, train: bool) -> _Split:
            stream = _byte_stream(source(split), config.text_key, separator)
            if train and len(stream) <= config.seq_len:
                raise ValueError(
                    f"split {split!r} of {config.name} holds {len(stream)} bytes, fewer than one "
                    f"window of data.seq_len + 1 = {config.seq_len + 1}"
                )
            return _Windows(stream, config.seq_len, partial_tail=not train)

    elif task == "classification":
        info, encode = _classification_info(builder, config)

        def open_split(split: str, train: bool) -> _Split:
            return _Classification(source(split), encode, config.label_key, config.seq_len)

    else:
        info = _seq2seq_info(builder, config)

        def open_split(split: str, train: bool) -> _Split:
            return _Seq2Seq(source(split), info)

    return Dataset(info, open_split, seed=seed, train_split=config.train_split)


def _classification_info(
    builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict
) -> tuple[DataInfo, Callable[[dict], np.ndarray]]:
    """DataInfo and record encoder of listops or a TFDS text or image classification dataset."""
    if builder.name == "listops":
        if config.seq_len < builder.builder_config.max_length:
            raise ValueError(
                f"data.seq_len={config.seq_len} would truncate listops/"
                f"{builder.builder_config.name} expressions of up to "
                f"{builder.builder_config.max_length} tokens"
            )
        info = DataInfo(
            "classification", len(listops.VOCAB), 0, 10, config.seq_len, None, None, None,
            vocab=listops.VOCAB, separator=" ",
        )
        return info, lambda record: info.encode(record["text"])
    if builder.name == "pathfinder":
        pixels = builder.builder_config.image_size**2
        if config.seq_len < pixels:
            raise ValueError(
                f"data.seq_len={config.seq_len} would truncate pathfinder/"
                f"{builder.builder_config.name} images of {pixels} pixels"
            )
    features = builder.info.features
    num_classes = config.num_classes
    if num_classes is None:
        label = features[config.label_key]
        if not isinstance(label, tfds.features.ClassLabel):
            raise ValueError(
                f"data.num_classes must be set: {builder.name}'s {config.label_key!r} feature "
                "is not a ClassLabel"
            )
        num_classes = label.num_classes
    info = DataInfo(
        "classification", 257, 0, num_classes, config.seq_len, None, None, None, byte_offset=1
    )
    if config.image_key in features:
        return info, lambda record: _gray_ids(record[config.image_key])
    _require_text_key(builder, config.text_key)
    return info, lambda record: info.encode(_text(record[config.text_key]))


def _seq2seq_info(
    builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict
) -> DataInfo:
    """DataInfo of seq2seq_digits, checking the lengths fit its longest examples."""
    max_length = builder.builder_config.max_length
    target_len = max_length + 1 if config.target_len is None else config.target_len
    if config.seq_len < max_length:
        raise ValueError(
            f"data.seq_len={config.seq_len} is shorter than the longest "
            f"seq2seq_digits/{builder.builder_config.name} input ({max_length} digits)"
        )
    if target_len < max_length + 1:
        raise ValueError(
            f"data.target_len={target_len} is shorter than the longest "
            f"seq2seq_digits/{builder.builder_config.name} target + EOS ({max_length + 1})"
        )
    return DataInfo(
        "seq2seq", len(seq2seq_digits.VOCAB), seq2seq_digits.PAD_ID, None, config.seq_len,
        target_len, seq2seq_digits.BOS_ID, seq2seq_digits.EOS_ID, vocab=seq2seq_digits.VOCAB,
    )
