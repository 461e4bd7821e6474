"""The input pipeline: a dataset by name -> deterministic numpy batches.

`build(config.data, seed=...)` asks `registry.get(data.name)` for the dataset's spec, picks the
representation `data.representation` names (None: the spec's default), prepares the TFDS builder
on first use (`array_record`, read back through `builder.as_data_source`, so no TensorFlow is
needed) and returns a `Dataset` whose batches are pure functions of `(seed, position)`:

- `train_batch(position, ...)` is global batch number `position` of an infinite stream that visits
  the train split in a fresh permutation every epoch, the permutation seeded by `(seed, epoch)`;
  nothing is carried from one call to the next, so a run resumed at step p sees what it would have.
- `eval_batches(split, ...)` is one unshuffled pass; the last batch is padded with weight-0 rows.
- Each process gets its contiguous slice of rows of the global batch.

What the batches hold is `Dataset.info` (`spec.DataInfo`): its `kind` and `features` (every key,
dtype and per-example shape). Kinds, `b` local rows:
- 'lm': `{'inputs', 'targets': int32 [b, T], 'weights': float32 [b, T]}` (pystdlib, textfile,
  duplication, a TFDS text dataset without a label such as lm1b).
- 'classification': `{'inputs': int32 [b, T], 'mask': bool [b, T], 'label': int32 [b],
  'weights': float32 [b]}` (listops, pathfinder's 'tokens', a TFDS dataset with a label and a
  text or image feature such as imdb_reviews or cifar10).
- 'seq2seq': `{'inputs': int32 [b, Ts], 'inputs_mask': bool [b, Ts], 'decoder_inputs': int32
  [b, Tt] (BOS + targets[:-1]), 'targets': int32 [b, Tt] (target + EOS), 'weights': float32
  [b, Tt]}` (seq2seq_digits).
- 'image_classification': `{'image': float32 [b, H, W, C] in [0, 1], 'label', 'weights'}`
  (`data.representation='image'` of pathfinder or a TFDS image dataset such as cifar10, mnist).
- 'video_classification': `{'video': float32 [b, T, H, W, C] in [0, 1], 'frame_mask': bool
  [b, T], 'label', 'weights'}` (`data.representation='video'` of a TFDS dataset of clips).
How each dataset fills them is said beside its builder (`spec.py`, `representations.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import registry
from attnx.data.spec import Batch, DataInfo, DatasetSpec, Representation, RowSource


class _TfdsNoise(logging.Filter):
    """Drops TFDS warnings that say nothing a user can act on: that a builder was given its config
    object (every embedded builder derives one), and that a not-yet-prepared variant folder has no
    dataset_info.json."""

    NOISE = ("Using custom data configuration", "has no dataset_info.json")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self.NOISE)


logging.getLogger("absl").addFilter(_TfdsNoise())

# Permutations kept per Dataset: a batch can straddle an epoch boundary.
_PERMUTATION_CACHE = 4


def default_data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The data fields every config carries (defaults: pystdlib, windows of 256 bytes).

    Raises:
      ValueError: an override names a field that does not exist.
    """
    config = ml_collections.ConfigDict()
    config.name = "pystdlib"  # an embedded dataset (registry.names()) or a TFDS name
    config.builder_config = ml_collections.FieldReference(None, field_type=str)  # e.g. 'tiny'
    # How the examples are served: 'tokens' | 'image' | 'video' as the dataset offers; None: its
    # default (tokens for every dataset today).
    config.representation = ml_collections.FieldReference(None, field_type=str)
    config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
    config.path = ml_collections.FieldReference(None, field_type=str)  # textfile's file or dir
    config.seq_len = 256  # LM window / classification length / encoder length
    config.target_len = ml_collections.FieldReference(None, field_type=int)  # seq2seq decoder
    config.num_frames = ml_collections.FieldReference(None, field_type=int)  # video; None: clips'
    # 'image': crop images of any size to image_size x image_size (None: serve them as they are).
    config.image_size = ml_collections.FieldReference(None, field_type=int)
    # 'image' training: RandAugment's number of operations per image (0: off) and magnitude.
    config.randaugment_layers = 0
    config.randaugment_magnitude = 10.0
    # 'image' training: each image turned by one of the square's 8 symmetries (rotations by 90
    # degrees, reflections), for labels none of them changes (Pathfinder); square images only.
    config.dihedral_augment = False
    config.train_split = "train"
    config.eval_split = "validation"
    config.test_split = "test"
    config.text_key = "text"  # TFDS feature names
    config.label_key = "label"
    config.image_key = "image"  # an image [H, W, C] or a clip [T, H, W, C]
    config.num_classes = ml_collections.FieldReference(None, field_type=int)  # None: from TFDS
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown data config field {key!r}; fields: {sorted(config)}")
        config[key] = value
    return config


class Dataset:
    """Deterministic, resumable batches of one dataset (see the module docstring)."""

    def __init__(
        self,
        info: DataInfo,
        open_split: Callable[[str, bool], RowSource],
        *,
        seed: int,
        train_split: str,
    ) -> None:
        self.info = info
        self._open_split = open_split
        self._seed = seed
        self._train_split = train_split
        self._splits: dict[tuple[str, bool], RowSource] = {}
        self._permutations: dict[int, np.ndarray] = {}
        self._split(train_split, True)  # Fail now, not at the first step, if it is unusable.

    def _split(self, split: str, train: bool) -> RowSource:
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
        indices = self.train_indices(position, global_batch_size=global_batch_size,
                                     process_index=process_index, process_count=process_count)
        examples = self._split(self._train_split, True)
        if hasattr(examples, "rows_at"):  # random rows (augmentation): keyed by the position
            return examples.rows_at(indices, [self._seed, position])
        return examples.rows(indices)

    def train_indices(
        self,
        position: int,
        *,
        global_batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        """The train-split example indices `[b]` of `train_batch(position, ...)`'s rows."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        local = _local_rows(global_batch_size, process_index, process_count)
        examples = self._split(self._train_split, True)
        epoch, offset = np.divmod(position * global_batch_size + local, len(examples))
        indices = np.empty_like(offset)
        for e in np.unique(epoch):
            indices[epoch == e] = self._permutation(int(e), len(examples))[offset[epoch == e]]
        return indices

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
        if max_batches is not None and max_batches < 0:
            raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
        examples = self._split(split, False)
        num_batches = -(-len(examples) // global_batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        for batch in range(num_batches):
            yield examples.rows(self.eval_indices(
                split, batch, global_batch_size=global_batch_size, process_index=process_index,
                process_count=process_count))

    def eval_indices(
        self,
        split: str,
        batch: int,
        *,
        global_batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        """The example indices `[b]` of this process's rows of eval batch number `batch` of
        `split` (-1: a padding row past the end of the split)."""
        rows = batch * global_batch_size + _local_rows(global_batch_size, process_index,
                                                       process_count)
        return np.where(rows < len(self._split(split, False)), rows, -1)


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


def _prepared_builder(
    spec: DatasetSpec, config: ml_collections.ConfigDict
) -> tfds.core.DatasetBuilder:
    """`spec.builder(config)`, its data generated (or downloaded) as array_record on first use.

    A lock file beside the data serializes processes that start at once (the processes of a
    multi-process run): one prepares, the others wait and then read its data."""
    builder = spec.builder(config)
    if builder.is_prepared():
        return builder
    os.makedirs(os.path.dirname(builder.data_dir), exist_ok=True)
    with open(f"{builder.data_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = spec.builder(config)  # A fresh one sees data prepared while this one waited.
        if not builder.is_prepared():
            config_name = f"/{builder.builder_config.name}" if builder.builder_config else ""
            print(
                f"attnx.data: preparing {builder.name}{config_name} {builder.version} in "
                f"{builder.data_dir} (first use; later runs reuse it)",
                flush=True,
            )
            start = time.perf_counter()
            # TFDS's progress bars only in a terminal (in a log they are escape sequences); its
            # own "downloading and preparing" / "prepared" prints repeat the lines here.
            tfds.display_progress_bar(sys.stderr.isatty())
            try:
                with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                    builder.download_and_prepare(file_format="array_record")
            finally:
                tfds.display_progress_bar(True)
            print(f"attnx.data: prepared {builder.name}{config_name} in "
                  f"{time.perf_counter() - start:.1f}s", flush=True)
    return builder


def _representation(spec: DatasetSpec, config: ml_collections.ConfigDict) -> Representation:
    """The representation `data.representation` names (None: the spec's default).

    Raises:
      ValueError: the dataset has no such representation (the valid ones are listed), or image
        augmentation is asked of another representation.
    """
    name = spec.default if config.representation is None else config.representation
    if name not in spec.representations:
        raise ValueError(
            f"data.representation={config.representation!r} is not a representation of "
            f"{config.name}; expected one of {sorted(spec.representations)} (None: "
            f"{spec.default!r})"
        )
    augmented = [f"data.{field}={config.get(field)!r}"
                 for field in ("randaugment_layers", "dihedral_augment") if config.get(field)]
    if augmented and name != "image":
        raise ValueError(f"{', '.join(augmented)} augments images, but {config.name} is served "
                         f"as {name!r}; set data.representation='image' or turn it off")
    return spec.representations[name]


def describe(data_config: ml_collections.ConfigDict) -> DataInfo:
    """The `DataInfo` that `build(data_config)` serves, from the builder's metadata alone: for
    datasets that are not (or cannot be) prepared here, e.g. ImageNet in a synthetic benchmark.
    Representations that need the examples themselves to describe them (the token ones) say so
    with the builder's own error."""
    spec = registry.get(data_config.name)
    return _representation(spec, data_config)(spec.builder(data_config), data_config).info


def build(data_config: ml_collections.ConfigDict, *, seed: int) -> Dataset:
    """The dataset `data_config` names (see `default_data_config`), prepared on first use.

    Raises:
      ValueError: an unknown dataset or representation, a missing textfile path, a field that
        does not fit the dataset (a feature key it lacks, pixels of the wrong rank, lengths too
        short for its examples), a negative seed.
    """
    config = data_config
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if config.seq_len < 1:
        raise ValueError(f"data.seq_len must be >= 1, got {config.seq_len}")
    spec = registry.get(config.name)
    representation = _representation(spec, config)
    builder = _prepared_builder(spec, config)
    served = representation(builder, config)

    def open_split(split: str, train: bool) -> RowSource:
        return served.open_split(builder.as_data_source(split), split, train)

    return Dataset(served.info, open_split, seed=seed, train_split=config.train_split)
