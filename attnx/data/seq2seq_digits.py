"""`seq2seq_digits`: generated digit-string transduction for the encoder-decoder Transformer.

Each example is `{'inputs': '40213', 'targets': '31204'}` (config `reverse`) or `'01234'` (config
`sort`): a random digit string of `min_length..max_length` digits and its reversed or sorted digits.
Inputs are unique across all splits, so no test input is seen in training. Randomness comes only
from `random.Random(seed).random()`, whose sequence Python keeps stable across versions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from attnx.data import representations
from attnx.data.spec import DataInfo, DatasetSpec, RowSource, Served, builder_of_configs

DIGITS = tuple(str(d) for d in range(10))
# Token ids: padding, decoder start, end of sequence, then the digits.
VOCAB = ("<pad>", "<bos>", "<eos>", *DIGITS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
_TRANSFORMS = {"reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s))}


@dataclasses.dataclass(eq=False)
class Seq2seqDigitsConfig(tfds.core.BuilderConfig):
    """Which transform, the digit-string length range (inclusive) and the split sizes."""

    transform: str = "reverse"
    min_length: int = 4
    max_length: int = 16
    num_train: int = 20_000
    num_validation: int = 1_000
    num_test: int = 1_000
    seed: int = 0


def generate(rng: random.Random, config: Seq2seqDigitsConfig) -> dict[str, str]:
    """One random `{'inputs', 'targets'}` pair."""
    span = config.max_length - config.min_length + 1
    length = config.min_length + int(rng.random() * span)
    inputs = "".join(DIGITS[int(rng.random() * 10)] for _ in range(length))
    return {"inputs": inputs, "targets": _TRANSFORMS[config.transform](inputs)}


class Seq2seqDigits(tfds.core.GeneratorBasedBuilder):
    """Reverse or sort a digit string."""

    name = "seq2seq_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Configs reverse and sort, 4-16 digits, 20,000/1,000/1,000."}
    BUILDER_CONFIGS = [
        Seq2seqDigitsConfig(
            name=name, transform=name, description=f"{name.capitalize()} 4-16 digits."
        )
        for name in ("reverse", "sort")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"inputs": tfds.features.Text(), "targets": tfds.features.Text()}
            ),
            supervised_keys=("inputs", "targets"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is generated.
        config = self.builder_config
        sizes = (config.num_train, config.num_validation, config.num_test)
        rng = random.Random(config.seed)
        seen: set[str] = set()
        examples = []
        while len(examples) < sum(sizes):
            example = generate(rng, config)
            if example["inputs"] not in seen:
                seen.add(example["inputs"])
                examples.append(example)
        bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
        return {
            split: self._generate_examples(examples[bounds[i] : bounds[i + 1]])
            for i, split in enumerate(("train", "validation", "test"))
        }

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[int, dict]]:
        yield from enumerate(examples)


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'seq2seq' over `VOCAB` ids: encoder length `data.seq_len`, decoder length
    `data.target_len` (None: the longest target + EOS), both checked to fit the longest example."""
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
    info = DataInfo(
        kind="seq2seq", features=representations.seq2seq_features(config.seq_len, target_len),
        vocab_size=len(VOCAB), pad_id=PAD_ID, seq_len=config.seq_len, target_len=target_len,
        bos_id=BOS_ID, eos_id=EOS_ID, vocab=VOCAB,
    )

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return representations.Seq2Seq(source, info)

    return Served(info, open_split)


SPEC = DatasetSpec(
    builder=builder_of_configs(Seq2seqDigits), representations={"tokens": _tokens},
    default="tokens",
)
