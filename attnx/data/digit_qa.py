"""`digit_qa`: questions about a canvas of three real handwritten digits, for two-modality models.

Each example is a canvas `[8, 24, 1]` uint8 holding three of scikit-learn's 8 x 8 handwritten
digits side by side (`sklearn_digits.images_and_labels()`; train canvases use only the images of
sklearn_digits' train split, validation and test only theirs), a short question, and its answer:

    "sum ?"                       -> the sum of the three digits, 0..27
    "largest ?"                   -> the largest digit, 0..9
    "how many 7 ?"                -> how many of the digits are 7, 0..3
    "is there a 3 left of a 5 ?"  -> yes if some 3 stands left of some 5 (3 != 5), else no

Classes: 0..27 (numbers), 28 = no, 29 = yes. The generator draws the question kind uniformly,
then the answer uniformly among the kind's answers (counts 0..3, yes/no half each; the digits of
"how many" and "left of" uniformly), then three digits uniformly among those with that answer,
then for each digit a random image of it. So the question alone tells only its kind's answer
range, and the image alone does not say what is asked: `single_modality_ceilings()` computes, from
this distribution, the best accuracy any model can reach from the question alone (0.221) or from
the digits alone (0.415, an upper bound for any image-only model), against 1.0 from both.

Builder configs: `default` (20,000 / 1,000 / 1,000 examples) and `tiny` (256 / 64 / 64, for
tests). Deterministic from the seed (0) given scikit-learn's copy of the digits and NumPy
(pinned); changing the generator bumps VERSION.

Served as `image_text` ('image_text_classification'): `image` float `[8, 24, 1]` in [0, 1],
`question` int32 `[data.seq_len]` (ids of `VOCAB`, 0 = padding), `question_mask` bool, `label`,
`weights`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from attnx.data import sklearn_digits
from attnx.data.representations import unit_interval
from attnx.data.spec import Batch, DataInfo, DatasetSpec, Feature, RowSource, Served
from attnx.data.spec import builder_of_configs

SPLITS = ("train", "validation", "test")
NUM_DIGITS = 3
DIGIT_SIZE = 8
IMAGE_SHAPE = (DIGIT_SIZE, NUM_DIGITS * DIGIT_SIZE, 1)
KINDS = ("sum", "largest", "count", "left")
VOCAB = ("<pad>", "sum", "largest", "how", "many", "is", "there", "a", "left", "of", "?",
         *(str(d) for d in range(10)))
MAX_QUESTION_LEN = 9  # "is there a 3 left of a 5 ?"
NO, YES = 28, 29
NUM_CLASSES = 30
CLASS_NAMES = tuple(str(n) for n in range(28)) + ("no", "yes")


@dataclasses.dataclass(eq=False)
class DigitQAConfig(tfds.core.BuilderConfig):
    """Split sizes and the seed."""

    num_train: int = 20_000
    num_validation: int = 1_000
    num_test: int = 1_000
    seed: int = 0


# ----------------------------------------------------------------------------- the generator


def _all_triples() -> np.ndarray:
    """Every digit triple `[1000, 3]`, in lexicographic order."""
    return np.array(list(itertools.product(range(10), repeat=NUM_DIGITS)), np.int64)


def _left_of(triples: np.ndarray, a: int, b: int) -> np.ndarray:
    """`[n]` bool: some a stands left of some b."""
    pairs = [(i, j) for i in range(NUM_DIGITS) for j in range(i + 1, NUM_DIGITS)]
    return np.any([(triples[:, i] == a) & (triples[:, j] == b) for i, j in pairs], axis=0)


def questions() -> list[tuple[str, tuple[int, ...]]]:
    """Every question as (kind, its digits): 1 sum, 1 largest, 10 counts, 90 left-of pairs."""
    return ([("sum", ()), ("largest", ())] + [("count", (d,)) for d in range(10)]
            + [("left", (a, b)) for a in range(10) for b in range(10) if a != b])


def question_text(kind: str, digits: tuple[int, ...]) -> str:
    """The question's words, separated by spaces."""
    if kind == "sum":
        return "sum ?"
    if kind == "largest":
        return "largest ?"
    if kind == "count":
        return f"how many {digits[0]} ?"
    return f"is there a {digits[0]} left of a {digits[1]} ?"


def answers(kind: str, digits: tuple[int, ...], triples: np.ndarray) -> np.ndarray:
    """The class of the question (kind, digits) for each triple `[n, 3]` -> `[n]`."""
    if kind == "sum":
        return triples.sum(1)
    if kind == "largest":
        return triples.max(1)
    if kind == "count":
        return (triples == digits[0]).sum(1)
    return np.where(_left_of(triples, *digits), YES, NO)


def answer_range(kind: str) -> tuple[int, ...]:
    """The classes a question of `kind` is answered by, each drawn equally often."""
    return {"sum": tuple(range(28)), "largest": tuple(range(10)), "count": tuple(range(4)),
            "left": (NO, YES)}[kind]


def distribution() -> tuple[list[tuple[str, tuple[int, ...]]], np.ndarray]:
    """The generator's joint distribution: (questions(), P `[questions, 1000 triples, classes]`)
    with triples in `_all_triples()` order."""
    triples = _all_triples()
    qs = questions()
    per_kind = {kind: sum(q[0] == kind for q in qs) for kind in KINDS}
    joint = np.zeros((len(qs), len(triples), NUM_CLASSES))
    for qi, (kind, digits) in enumerate(qs):
        answer = answers(kind, digits, triples)
        p_question = 1 / len(KINDS) / per_kind[kind]
        for a in answer_range(kind):
            chosen = answer == a
            joint[qi, chosen, a] = p_question / len(answer_range(kind)) / chosen.sum()
    return qs, joint


def single_modality_ceilings() -> dict[str, float]:
    """The best accuracy reachable from one modality under the generator's distribution:
    'text' (the question alone: the likeliest answer of each question) and 'image' (the three
    digits alone, which bounds any model of the canvas: the likeliest answer of each triple,
    whatever is asked), and 'both' (1: the answer is a function of question and digits)."""
    _, joint = distribution()
    return {"text": float(joint.sum(1).max(-1).sum()),
            "image": float(joint.sum(0).max(-1).sum()),
            "both": float(joint.max(-1).sum())}


def generate(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """`n` draws of {'kind', 'question' (text), 'digits' `[3]`, 'label'} (see the docstring)."""
    triples = _all_triples()
    by_kind: dict[str, list[tuple[str, tuple[int, ...]]]] = {k: [] for k in KINDS}
    for q in questions():
        by_kind[q[0]].append(q)
    out = []
    for _ in range(n):
        kind = KINDS[rng.integers(len(KINDS))]
        _, digits = by_kind[kind][rng.integers(len(by_kind[kind]))]
        label = answer_range(kind)[rng.integers(len(answer_range(kind)))]
        candidates = np.flatnonzero(answers(kind, digits, triples) == label)
        triple = triples[candidates[rng.integers(len(candidates))]]
        out.append({"kind": kind, "question": question_text(kind, digits), "digits": triple,
                    "label": int(label)})
    return out


def canvas(images: np.ndarray, rng: np.random.Generator, pools: list[np.ndarray],
           digits: np.ndarray) -> np.ndarray:
    """The `IMAGE_SHAPE` canvas of `digits`: for each, a random image of it from `pools[digit]`
    (indices into `images [n, 8, 8]`), left to right."""
    chosen = [images[pool[rng.integers(len(pool))]] for pool in (pools[d] for d in digits)]
    return np.concatenate(chosen, axis=1)[..., None]


class DigitQA(tfds.core.GeneratorBasedBuilder):
    """Questions about three handwritten digits; the answer needs both the canvas and the
    question."""

    name = "digit_qa"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sum, largest, how many, left of; configs default and tiny."}
    BUILDER_CONFIGS = [
        DigitQAConfig(name="default", description="20,000 / 1,000 / 1,000 examples."),
        DigitQAConfig(name="tiny", description="256 / 64 / 64 examples, for tests.",
                      num_train=256, num_validation=64, num_test=64),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "question": tfds.features.Text(),
                "digits": tfds.features.Tensor(shape=(NUM_DIGITS,), dtype=np.int64),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Generated from the installed scikit-learn's digits.
        config = self.builder_config
        images, labels = sklearn_digits.images_and_labels()
        indices = sklearn_digits.split_indices(config.seed)
        sizes = dict(zip(SPLITS, (config.num_train, config.num_validation, config.num_test)))
        return {split: self._generate_examples(images, labels, indices[split], sizes[split],
                                               np.random.default_rng([config.seed, i]))
                for i, split in enumerate(SPLITS)}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                           n: int, rng: np.random.Generator) -> Iterator[tuple[int, dict]]:
        pools = [indices[labels[indices] == d] for d in range(10)]
        for key, example in enumerate(generate(rng, n)):
            yield key, {"image": canvas(images, rng, pools, example["digits"]),
                        "question": example["question"], "digits": example["digits"],
                        "label": example["label"]}


# ----------------------------------------------------------------------------- serving


def image_text_features(shape: tuple[int, int, int], seq_len: int) -> dict[str, Feature]:
    """Features of 'image_text_classification' batches: an image and a question of `seq_len`."""
    return {
        "image": Feature("float32", shape),
        "question": Feature("int32", (seq_len,)),
        "question_mask": Feature("bool", (seq_len,)),
        "label": Feature("int32", ()),
        "weights": Feature("float32", ()),
    }


class ImageQuestions:
    """Records with an image, a question text and a label, as batch rows."""

    def __init__(self, source: Any, info: DataInfo) -> None:
        self._source = source
        self._info = info

    def __len__(self) -> int:
        return len(self._source)

    def rows(self, indices: np.ndarray) -> Batch:
        info = self._info
        images = np.zeros((len(indices), *info.image_shape), np.float32)
        question = np.zeros((len(indices), info.seq_len), np.int32)
        labels = np.zeros(len(indices), np.int32)
        for row, index in enumerate(indices):
            if index >= 0:
                record = self._source[int(index)]
                images[row] = unit_interval(record["image"])
                ids = info.encode(record["question"])
                question[row, : len(ids)] = ids
                labels[row] = int(record["label"])
        return {"image": images, "question": question, "question_mask": question != 0,
                "label": labels, "weights": (indices >= 0).astype(np.float32)}


def _image_text(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict) -> Served:
    """'image_text_classification', questions padded to `data.seq_len` (>= the longest, 9)."""
    if config.seq_len < MAX_QUESTION_LEN:
        raise ValueError(f"data.seq_len={config.seq_len} would truncate digit_qa questions of up "
                         f"to {MAX_QUESTION_LEN} words")
    info = DataInfo(
        kind="image_text_classification", features=image_text_features(IMAGE_SHAPE, config.seq_len),
        vocab_size=len(VOCAB), pad_id=0, num_classes=NUM_CLASSES, seq_len=config.seq_len,
        vocab=VOCAB, separator=" ")

    def open_split(source: Any, split: str, train: bool) -> RowSource:
        return ImageQuestions(source, info)

    return Served(info, open_split)


SPEC = DatasetSpec(builder=builder_of_configs(DigitQA),
                   representations={"image_text": _image_text}, default="image_text")
