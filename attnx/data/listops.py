"""`listops`: the Long Range Arena ListOps task, generated locally.

An example is a nested expression over the digits 0-9 with the operators MIN, MAX, MED (integer
median: the mean of the two middle values rounded down for an even count, LRA's
`int(np.median(args))`) and SM (sum mod 10), written as LRA's model sees it, with '(' and ')'
dropped: `'[MAX 2 9 [MIN 4 7 ] 0 ]'`. The label is the expression's value 0-9.

The generator follows LRA's (`lra_benchmarks/data/listops.py`): a node below `max_depth` becomes an
operator with probability 0.25 (else a digit), an operator takes 2..`max_args` arguments, the length
counts operator, digit and ']' tokens, trees outside the length range are rejected and duplicates
dropped across all splits. Trees that grow past `max_length` are abandoned as soon as they do, which
leaves the distribution of accepted trees unchanged. Randomness comes only from
`random.Random(seed).random()`, whose sequence Python keeps stable across versions.
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

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
# Token ids: 0 is padding, then the digits, the operators and the closing bracket.
VOCAB = ("<pad>", *DIGITS, *OPERATORS, END)
# Probability that a node above the depth limit is an operator (LRA's VALUE_P).
OPERATOR_P = 0.25


@dataclasses.dataclass(eq=False)
class ListopsConfig(tfds.core.BuilderConfig):
    """Sizes of the splits and the shape of the trees; lengths are inclusive token counts."""

    num_train: int = 0
    num_validation: int = 0
    num_test: int = 0
    min_length: int = 1
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10
    seed: int = 0


class _TooLong(Exception):
    """A tree grew past the length limit; it is abandoned."""


def apply_operator(operator: str, args: list[int]) -> int:
    """The value of `operator` (one of OPERATORS) applied to digit values `args`."""
    if operator == "[MIN":
        return min(args)
    if operator == "[MAX":
        return max(args)
    if operator == "[MED":
        ordered = sorted(args)
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2
    return sum(args) % 10


def _tree(rng: random.Random, depth: int, config: ListopsConfig, tokens: list[str]) -> int:
    """Append one random (sub)tree's tokens to `tokens` and return its value."""
    if len(tokens) >= config.max_length:
        raise _TooLong
    if depth < config.max_depth and rng.random() <= OPERATOR_P:
        operator = OPERATORS[int(rng.random() * len(OPERATORS))]
        num_args = 2 + int(rng.random() * (config.max_args - 1))
        tokens.append(operator)
        args = [_tree(rng, depth + 1, config, tokens) for _ in range(num_args)]
        tokens.append(END)
        return apply_operator(operator, args)
    value = int(rng.random() * 10)
    tokens.append(DIGITS[value])
    return value


def generate(rng: random.Random, config: ListopsConfig) -> tuple[str, int]:
    """One expression with `min_length <= tokens <= max_length`: `(text, value)`."""
    while True:
        tokens: list[str] = []
        try:
            value = _tree(rng, 1, config, tokens)
        except _TooLong:
            continue
        if config.min_length <= len(tokens) <= config.max_length:
            return " ".join(tokens), value


class Listops(tfds.core.GeneratorBasedBuilder):
    """LRA ListOps: classify the value (0-9) of a nested list-operation expression."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "LRA's ListOps generator; configs lra, small, tiny."}
    BUILDER_CONFIGS = [
        # LRA keeps 500 < length < 2000.
        ListopsConfig(
            name="lra",
            description="LRA ListOps: 96,000/2,000/2,000 expressions of 501-1999 tokens.",
            num_train=96_000, num_validation=2_000, num_test=2_000,
            min_length=501, max_length=1999,
        ),
        ListopsConfig(
            name="small",
            description="CPU-sized ListOps: 16,000/1,000/1,000 expressions of 64-512 tokens.",
            num_train=16_000, num_validation=1_000, num_test=1_000,
            min_length=64, max_length=512,
        ),
        ListopsConfig(
            name="tiny",
            description="Tests and smoke runs: 512/128/128 expressions of 16-128 tokens.",
            num_train=512, num_validation=128, num_test=128,
            min_length=16, max_length=128,
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "lra"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=10)}
            ),
            supervised_keys=("text", "label"),
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
            text, value = generate(rng, config)
            if text not in seen:
                seen.add(text)
                examples.append({"text": text, "label": value})
        bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
        return {
            split: self._generate_examples(examples[bounds[i] : bounds[i + 1]])
            for i, split in enumerate(("train", "validation", "test"))
        }

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[int, dict]]:
        yield from enumerate(examples)


def _tokens(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'classification' of the expressions as `VOCAB` ids, `data.seq_len` long (at least the
    builder config's longest expression)."""
    max_length = builder.builder_config.max_length
    if config.seq_len < max_length:
        raise ValueError(
            f"data.seq_len={config.seq_len} would truncate listops/{builder.builder_config.name} "
            f"expressions of up to {max_length} tokens"
        )
    info = DataInfo(
        kind="classification", features=representations.classification_features(config.seq_len),
        vocab_size=len(VOCAB), pad_id=0, num_classes=10, seq_len=config.seq_len, vocab=VOCAB,
        separator=" ",
    )

    def encode(record: dict) -> np.ndarray:
        return info.encode(record["text"])

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return representations.TokenClassification(source, encode, config.label_key,
                                                    config.seq_len)

    return Served(info, open_split)


SPEC = DatasetSpec(
    builder=builder_of_configs(Listops), representations={"tokens": _tokens}, default="tokens"
)
