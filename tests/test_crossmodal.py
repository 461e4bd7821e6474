"""The two-modality task end to end: the `digit_qa` builder, its single-modality ceilings, the
multimodal model's blocks and baselines, and a smoke run per block type (one end to end, the
others' train steps).

The ceilings are checked twice: the exact values from the generator's distribution (the text one
by hand: a quarter of each kind's 1 / answers), and the same best-guess accuracies measured on
20,000 generated examples. Answers are recomputed from the question text and the digits by a
parser written here; canvases are checked to be real digit images of the right split.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnx import data, models, train
from attnx.data import digit_qa, sklearn_digits
from attnx.models import multimodal
from helpers import fast_jit, load_config, train_setup


# ----------------------------------------------------------------------------- the data


def _answer(question: str, digits: list[int]) -> int:
    """The class of `question` about `digits`, from the words."""
    words = question.split()
    if words[0] == "sum":
        return sum(digits)
    if words[0] == "largest":
        return max(digits)
    if words[:2] == ["how", "many"]:
        return digits.count(int(words[2]))
    a, b = int(words[3]), int(words[7])
    left = any(digits[i] == a and digits[j] == b for i in range(3) for j in range(i + 1, 3))
    return digit_qa.YES if left else digit_qa.NO


@pytest.fixture(scope="module")
def examples():
    return digit_qa.generate(np.random.default_rng(123), 20_000)


def test_answers_are_right_and_generation_is_deterministic(examples):
    for example in examples[:2000]:
        assert _answer(example["question"], list(example["digits"])) == example["label"]
    again = digit_qa.generate(np.random.default_rng(123), 50)
    assert [e["question"] for e in again] == [e["question"] for e in examples[:50]]
    kinds = collections.Counter(e["kind"] for e in examples)
    assert set(kinds) == set(digit_qa.KINDS) and min(kinds.values()) > 4500


def test_single_modality_ceilings_are_low_exactly_and_on_samples(examples):
    ceilings = digit_qa.single_modality_ceilings()
    assert ceilings["text"] == pytest.approx((1 / 28 + 1 / 10 + 1 / 4 + 1 / 2) / 4)
    assert ceilings["image"] == pytest.approx(0.4151, abs=1e-4)
    assert ceilings["both"] == pytest.approx(1.0)
    # Measured: a best-guess table (the commonest answer of each question, of each digit
    # triple) fitted on half the samples scores at most the ceiling on the other half (up to
    # noise), and at least the ceiling on its own half (it overfits).
    half = len(examples) // 2
    for key, ceiling in (("question", ceilings["text"]), ("digits", ceilings["image"])):
        table: dict = collections.defaultdict(collections.Counter)
        for e in examples[:half]:
            table[str(e[key])][e["label"]] += 1
        guess = {k: c.most_common(1)[0][0] for k, c in table.items()}
        in_sample = sum(c.most_common(1)[0][1] for c in table.values()) / half
        held_out = np.mean([guess.get(str(e[key])) == e["label"] for e in examples[half:]])
        assert held_out < ceiling + 0.015 and in_sample > ceiling - 0.015, (key, held_out,
                                                                             in_sample, ceiling)


@pytest.fixture(scope="module")
def tiny(data_dir):
    config = data.default_data_config(name="digit_qa", builder_config="tiny", seq_len=10,
                                      data_dir=data_dir)
    return data.build(config, seed=0)


def test_served_batches_and_canvases_of_real_digits_of_their_split(tiny, data_dir):
    info = tiny.info
    assert info.kind == "image_text_classification" and info.image_shape == (8, 24, 1)
    assert info.num_classes == 30 and info.vocab_size == len(digit_qa.VOCAB)
    batch = next(iter(tiny.eval_batches("validation", global_batch_size=64, max_batches=1)))
    assert batch["question"].shape == (64, 10) and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["question_mask"], batch["question"] != 0)
    builder = digit_qa.DigitQA(config="tiny", data_dir=data_dir)
    source = builder.as_data_source()["validation"]
    images, labels = sklearn_digits.images_and_labels()
    allowed = set(sklearn_digits.split_indices(0)["validation"].tolist())
    for row in range(16):
        record = source[row]
        assert info.decode(batch["question"][row]) == record["question"].decode()
        assert _answer(record["question"].decode(), list(record["digits"])) == batch["label"][row]
        for slot, digit in enumerate(record["digits"]):
            block = record["image"][:, 8 * slot: 8 * slot + 8, 0]
            matches = np.flatnonzero((images == block).all(axis=(1, 2)))
            assert any(labels[m] == digit and m in allowed for m in matches)
    np.testing.assert_allclose(batch["image"][0], source[0]["image"] / 255)


def test_questions_must_fit_seq_len(data_dir):
    config = data.default_data_config(name="digit_qa", builder_config="tiny", seq_len=8,
                                      data_dir=data_dir)
    with pytest.raises(ValueError, match="seq_len=8 would truncate digit_qa questions"):
        data.build(config, seed=0)


# ----------------------------------------------------------------------------- the model


def _settings(block: str, **overrides):
    config = load_config("crossmodal_qa", f"block={block},smoke")
    config.model.update(overrides)
    return models.model_settings(config.model, dtype="float32", vocab_size=21, num_classes=30,
                                 image_shape=(8, 24, 1))


def test_baselines_ignore_the_other_input_and_gated_ignores_the_image_until_its_gates_open():
    """Logits `[B, 30]`; padded words change nothing. (That the fusion blocks use both inputs:
    every parameter, both encoders' included, learns in `test_smoke_steps`.)"""
    keys = jax.random.split(jax.random.key(0), 2)
    image = jax.random.uniform(keys[0], (2, 8, 24, 1))
    question = jax.random.randint(keys[1], (2, 10), 1, 21).at[1, 5:].set(0)
    mask = question != 0
    other_image = image[::-1]
    other_question = question.at[:, 0].set(jnp.where(question[:, 0] == 7, 8, 7))
    for block in ("text_only", "image_only", "gated"):
        module = multimodal.MultimodalClassifier(_settings(block), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(module)
        model = fast_jit(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs), state,
                         image, question, mask)
        logits = model(state, image, question, mask)
        assert logits.shape == (2, 30) and logits.dtype == jnp.float32
        changed_image = model(state, other_image, question, mask)
        changed_text = model(state, image, other_question, mask)
        ignores_image = block in ("text_only", "gated")
        assert ignores_image == bool(jnp.allclose(changed_image, logits)), block
        assert (block == "image_only") == bool(jnp.allclose(changed_text, logits)), block
        # Padded words change nothing.
        np.testing.assert_allclose(model(state, image, question.at[1, 7].set(4), mask), logits,
                                   atol=1e-6)
        if block == "gated":
            for layer in module.fusion:
                layer.alpha[...] = jnp.asarray(0.5)
            _, opened = nnx.split(module)
            assert not jnp.allclose(model(opened, image, question, mask),
                                    model(opened, other_image, question, mask))


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="model.block must be one of"):
        _settings("late_fusion")
    with pytest.raises(ValueError, match=r"mechanism='lsh' cannot attend"):
        _settings("cross", cross_attention="lsh")
    with pytest.raises(ValueError, match="model.shared is co-attention's option"):
        _settings("cross", shared=True)
    with pytest.raises(ValueError, match="patch_size=5 must divide"):
        multimodal.MultimodalClassifier(_settings("cross", patch_size=5), rngs=nnx.Rngs(0))


def test_smoke_run(data_dir, tmp_path):
    """`crossmodal_qa:block=cross,smoke` end to end (train, evaluate, checkpoint)."""
    config = load_config("crossmodal_qa", "block=cross,smoke")
    config.data.data_dir = data_dir
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize("block", ["co", "gated", "perceiver"])
def test_smoke_steps(block, tiny):
    """The other blocks' smoke configs: 3 train steps (a whole run each would triple this
    file's time): finite loss, every parameter learning (so both encoders reach the loss)."""
    config = load_config("crossmodal_qa", f"block={block},smoke")
    graphdef, task, tx, schedule, state = train_setup(config, tiny.info)
    step = train.make_train_step(graphdef, task, tx, schedule)
    batch = tiny.train_batch(0, global_batch_size=config.batch_size)
    compiled = fast_jit(step, state, batch, jax.random.key(0))
    new = state
    for i in range(config.num_train_steps):
        new, metrics = compiled(new, batch, jax.random.key(i))
    assert np.isfinite(float(metrics["loss"])) and int(new["step"]) == 3
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state["params"], new["params"])
    assert all(jax.tree.leaves(moved))
