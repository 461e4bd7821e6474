"""`duplication`: the Reformer paper's synthetic task (Kitaev et al., 2020, section 5).

Every example is `0 w 0 w`: a random word `w` of `length // 2 - 1` symbols drawn uniformly from
1..`num_symbols` (127 in the paper), written twice, each copy after a 0. Stored as
`{'tokens': int32 [length]}`. A language model sees the whole sequence but is scored only on the
second half, the part that can be predicted (by looking back `length // 2` positions).

As a language-model batch (`Rows`, with the model predicting token t from tokens < t, as trax's
shift-right LM does): `inputs = [0, tokens[:-1]]`, `targets = tokens`, `weights[t] = 1` for
t >= length // 2, so the window is `length` long (a power of two, as axial positions and LSH chunks
like) and exactly the second half `0 w` is scored.

Randomness comes only from `random.Random(seed)` (`choices` draws `floor(random() * n)`), whose
sequence Python keeps stable across versions; splits are drawn one after the other.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DataInfo, DatasetSpec, RowSource, Served, builder_of_configs


@dataclasses.dataclass(eq=False)
class DuplicationConfig(tfds.core.BuilderConfig):
    """Sequence length (of `0 w 0 w`, even, >= 4), alphabet size and split sizes."""

    length: int = 1024
    num_symbols: int = 127
    num_train: int = 0
    num_validation: int = 0
    num_test: int = 0
    seed: int = 0


def vocab_size(config: DuplicationConfig) -> int:
    """Token ids 0 (separator) .. num_symbols."""
    return config.num_symbols + 1


def generate(rng: random.Random, config: DuplicationConfig) -> np.ndarray:
    """One example `0 w 0 w`, int32 `[length]`."""
    word = rng.choices(range(1, config.num_symbols + 1), k=config.length // 2 - 1)
    half = [0] + word
    return np.array(half + half, np.int32)


def lm_rows(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Examples `[b, L]` -> `{'inputs', 'targets': int32 [b, L], 'weights': float32 [b, L]}`.

    inputs are the tokens shifted right by one (a 0 in front), targets the tokens; only targets in
    the second half (t >= L // 2) are weighted.
    """
    tokens = np.asarray(tokens, np.int32)
    length = tokens.shape[1]
    inputs = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
    weights = np.broadcast_to(np.arange(length) >= length // 2, tokens.shape)
    return {"inputs": inputs, "targets": tokens, "weights": weights.astype(np.float32)}


class Rows:
    """A split as language-model rows for the input pipeline: `len()` and `rows(indices)`.

    Index -1 gives a padding row (all zeros, weight 0).
    """

    def __init__(self, source: Any, length: int) -> None:
        self._source = source
        self._length = length

    def __len__(self) -> int:
        return len(self._source)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        tokens = np.zeros((len(indices), self._length), np.int32)
        for row, index in enumerate(indices):
            if index >= 0:
                tokens[row] = self._source[int(index)]["tokens"]
        batch = lm_rows(tokens)
        batch["weights"] = batch["weights"] * (np.asarray(indices) >= 0)[:, None]
        return batch


class Duplication(tfds.core.GeneratorBasedBuilder):
    """Copy a random word: sequences `0 w 0 w` (Reformer's synthetic task)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Configs len1024 (paper), len256 (CPU budget), tiny (tests)."}
    BUILDER_CONFIGS = [
        DuplicationConfig(
            name="len1024",
            description="The paper's setting: length 1024, symbols 1-127; 50,000/1,000/1,000.",
            length=1024, num_train=50_000, num_validation=1_000, num_test=1_000,
        ),
        DuplicationConfig(
            name="len256",
            description="CPU-budget runs: length 256, symbols 1-127; 64,000/1,000/1,000.",
            length=256, num_train=64_000, num_validation=1_000, num_test=1_000,
        ),
        DuplicationConfig(
            name="tiny",
            description="Tests and smoke runs: length 32, symbols 1-127; 512/64/64.",
            length=32, num_train=512, num_validation=64, num_test=64,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "len1024"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "tokens": tfds.features.Tensor(shape=(self.builder_config.length,),
                                               dtype=np.int32,
                                               encoding=tfds.features.Encoding.ZLIB),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is generated.
        config = self.builder_config
        if config.length < 4 or config.length % 2:
            raise ValueError(f"duplication length must be even and >= 4, got {config.length}")
        rng = random.Random(config.seed)
        splits = {}
        for split, size in (("train", config.num_train), ("validation", config.num_validation),
                            ("test", config.num_test)):
            splits[split] = self._generate_examples([generate(rng, config) for _ in range(size)])
        return splits

    def _generate_examples(self, examples: list[np.ndarray]) -> Iterator[tuple[int, dict]]:
        for index, tokens in enumerate(examples):
            yield index, {"tokens": tokens}


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'lm' rows of whole sequences (`Rows`); `data.seq_len` must be the sequence length."""
    length = builder.builder_config.length
    if config.seq_len != length:
        raise ValueError(
            f"data.seq_len must equal the length of duplication/{builder.builder_config.name} "
            f"sequences, {length}, got {config.seq_len}"
        )
    info = DataInfo(
        kind="lm", features=representations.lm_features(length),
        vocab_size=vocab_size(builder.builder_config), pad_id=0, seq_len=length,
    )

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return Rows(source, length)

    return Served(info, open_split)


SPEC = DatasetSpec(
    builder=builder_of_configs(Duplication), representations={"tokens": _tokens},
    default="tokens",
)
