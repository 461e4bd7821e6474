"""What a dataset declares to the input pipeline: its spec, and the `DataInfo` it serves.

A `DatasetSpec` lives beside its builder. It says how to construct the builder from `config.data`
(and which builder configs are valid) and which representations the dataset can be served in:
`data.representation` names one (None: the spec's `default`). A representation is a function
`(prepared builder, config.data) -> Served`: the `DataInfo` of the batches and how a split's row
source is opened; it makes the checks that the config fits the dataset (lengths, feature keys).
`attnx/data/registry.py` maps dataset names to specs; the pipeline only asks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

Batch = dict[str, np.ndarray]

# The kinds of batches a DataInfo can describe, and the features each kind's batches hold.
KIND_FEATURES: Mapping[str, frozenset[str]] = {
    "lm": frozenset({"inputs", "targets", "weights"}),
    "classification": frozenset({"inputs", "mask", "label", "weights"}),
    "seq2seq": frozenset({"inputs", "inputs_mask", "decoder_inputs", "targets", "weights"}),
    "image_classification": frozenset({"image", "label", "weights"}),
    "video_classification": frozenset({"video", "frame_mask", "label", "weights"}),
    "image_text_classification": frozenset(
        {"image", "question", "question_mask", "label", "weights"}),
}


@dataclasses.dataclass(frozen=True)
class Feature:
    """One key of a batch: its numpy dtype name and its shape per example (no batch dim)."""

    dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataInfo:
    """What a model needs to know about the data (None where a field means nothing for `kind`).

    Attributes:
      kind: the batches served, one of `KIND_FEATURES`: 'lm', 'classification' (token
        sequences), 'seq2seq', 'image_classification', 'video_classification',
        'image_text_classification' (an image and a question about it).
      features: every key of the batches, `{name: Feature}` (shapes per example).
      vocab_size: number of token ids (token kinds).
      pad_id: padding id (0 for every token kind).
      num_classes: the classification kinds.
      seq_len: model input length (LM window T, classification length, seq2seq encoder length).
      target_len: seq2seq decoder length.
      bos_id, eos_id: seq2seq decoder start and end tokens.
      vocab: id -> token for symbol vocabularies (listops, digits); None for byte-level ones.
      separator: how `vocab` tokens are written in text ('' for one character per token).
      byte_offset: byte-level vocabularies: id = byte + byte_offset.
    """

    kind: str
    features: Mapping[str, Feature]
    vocab_size: int | None = None
    pad_id: int | None = None
    num_classes: int | None = None
    seq_len: int | None = None
    target_len: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    vocab: tuple[str, ...] | None = None
    separator: str = ""
    byte_offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KIND_FEATURES:
            raise ValueError(f"kind must be one of {sorted(KIND_FEATURES)}, got {self.kind!r}")
        if set(self.features) != KIND_FEATURES[self.kind]:
            raise ValueError(
                f"a {self.kind!r} DataInfo has the features {sorted(KIND_FEATURES[self.kind])}, "
                f"got {sorted(self.features)}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """`(H, W, C)` of the batches' images ('image_classification',
        'image_text_classification'); None for other kinds."""
        image = self.features.get("image")
        return None if image is None else image.shape

    @property
    def clip_shape(self) -> tuple[int, int, int, int] | None:
        """`(T, H, W, C)` of 'video_classification' batches; None for other kinds."""
        video = self.features.get("video")
        return None if video is None else video.shape

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


class RowSource(Protocol):
    """The examples of one split as batch rows, addressable by index."""

    def __len__(self) -> int: ...

    def rows(self, indices: np.ndarray) -> Batch:
        """The batch rows of examples `indices` `[b]`; index -1 gives a weight-0 padding row."""
        ...

    # A train source whose rows are random (augmentation) also defines
    # `rows_at(indices, seed: list[int]) -> Batch`; the dataset calls it with [its seed, the
    # batch position], so the randomness replays exactly on resume and on every process.


@dataclasses.dataclass(frozen=True)
class Served:
    """A dataset in one representation.

    Attributes:
      info: what its batches hold.
      open_split: `(data source of a split, split name, train) -> RowSource`; `train` is False
        for evaluation passes (an LM then also serves the stream's last, partial window).
    """

    info: DataInfo
    open_split: Callable[[Any, str, bool], RowSource]


Representation = Callable[[tfds.core.DatasetBuilder, ml_collections.ConfigDict], Served]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """How the pipeline builds and serves one dataset.

    Attributes:
      builder: `config.data -> TFDS builder` (not yet prepared); raises ValueError for a
        builder config the dataset does not have.
      representations: `{data.representation: Representation}`.
      default: the representation served when `data.representation` is None.
    """

    builder: Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]
    representations: Mapping[str, Representation]
    default: str

    def __post_init__(self) -> None:
        if self.default not in self.representations:
            raise ValueError(
                f"default representation {self.default!r} is not one of "
                f"{sorted(self.representations)}"
            )


def builder_of_configs(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
) -> Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]:
    """A spec's `builder` for a builder with a fixed list of `BUILDER_CONFIGS`:
    `data.builder_config` is one of their names, or None for the builder's default."""
    known = [c.name for c in builder_cls.BUILDER_CONFIGS]

    def build(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
        if config.builder_config is not None and config.builder_config not in known:
            raise ValueError(
                f"data.builder_config={config.builder_config!r} is not a config of "
                f"{builder_cls.name}; expected one of {known}"
            )
        return builder_cls(config=config.builder_config, data_dir=config.data_dir)

    return build


def check_no_builder_config(
    config: ml_collections.ConfigDict, name: str, derived_from: str
) -> None:
    """Raise ValueError if `data.builder_config` is set for `name`, whose builder config is
    derived from `derived_from`."""
    if config.builder_config is not None:
        raise ValueError(
            f"data.builder_config must be None for {name} (its config is derived from "
            f"{derived_from}), got {config.builder_config!r}"
        )
