"""Tasks: what a batch holds, how a model is run on it, what is measured, what can be sampled.

A task is declared once, here, and everything else asks it: the trainer (forward, loss, metrics),
`python -m attnx.sample` and the TensorBoard samples (`complete`, `summary_samples`), the
attention-map images (`map_features`), the model benchmark and the pipeline check
(`data_kind`, `features`). A model's registry entry names its task; no other file compares task
names. Adding a task is one `Task(...)` in `_TASKS`.

Every forward returns `(logits, targets, weights)`: float32 logits `[..., V]`, integer targets
`[...]` and float weights `[...]` (0 = not scored), so one weighted cross entropy serves all tasks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attnx import decoding
from attnx.models import longformer

Array = jax.Array
Batch = Mapping[str, Any]
Forward = Callable[[nnx.Module, Batch, "Array | None"], tuple[Array, Array, Array]]

# Masked-LM corruption: the share of real tokens chosen, and the fixed key of evaluation batches.
MLM_RATE = 0.15
MLM_EVAL_SEED = 0


@dataclasses.dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
      name: registry name, as model entries give it.
      data_kind: the `DataInfo.kind` of the datasets it reads.
      features: the batch keys `forward` reads (checked against the dataset's features).
      forward: `(model, batch, rng) -> (logits, targets, weights)`; `rng=None` is evaluation
        (no dropout, BatchNorm running averages).
      bits_per_byte: report `loss / ln 2` as `bits_per_byte` (byte-level language models).
      causal: its models attend causally (a query sees half the keys on average: the FLOP
        estimate of `python -m attnx.bench --config`).
      extra_vocab: ids the model needs beyond the data's vocabulary (the masked LM's [MASK]).
      map_features: batch keys handed to `model.attention_maps(...)`, or None if the task's
        models draw no maps.
      complete: `(model, info, prompt, **sampling) -> text` for `python -m attnx.sample`, or None.
      summary_samples: `(config, model, dataset, seed) -> texts` for TensorBoard, or None.
    """

    name: str
    data_kind: str
    features: tuple[str, ...]
    forward: Forward
    bits_per_byte: bool = False
    causal: bool = False
    extra_vocab: int = 0
    map_features: tuple[str, ...] | None = None
    complete: Callable[..., str] | None = None
    summary_samples: Callable[..., list[str]] | None = None

    def metrics(self, loss_sum: float, correct: float, weight: float) -> dict[str, float]:
        """Mean loss and accuracy over the scored positions (and bits per byte where it applies)."""
        weight = max(weight, 1.0)
        out = {"loss": loss_sum / weight, "accuracy": correct / weight}
        if self.bits_per_byte:
            out["bits_per_byte"] = out["loss"] / math.log(2)
        return out

    def check_batch(self, batch: Batch, where: str) -> None:
        """Raise ValueError if `batch` lacks a feature this task reads."""
        missing = [k for k in self.features if k not in batch]
        if missing:
            raise ValueError(f"task {self.name!r} reads features {list(self.features)}; "
                             f"{where} has no {missing} (it has {sorted(batch)})")


def loss_sums(logits: Array, targets: Array, weights: Array,
              label_smoothing: float = 0.0) -> tuple[Array, Array, Array]:
    """Weighted sums over all positions: (loss_sum, correct_sum, weight_sum).

    logits `[..., V]` float32, targets `[...]` int, weights `[...]`.
    """
    vocab = logits.shape[-1]
    if label_smoothing:
        labels = optax.smooth_labels(jax.nn.one_hot(targets, vocab), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, labels)
    else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weights = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return (loss * weights).sum(), (correct * weights).sum(), weights.sum()


# ----------------------------------------------------------------------------------------------
# Forwards.


def _lm_forward(model, batch, rng):
    """inputs `[B, T]` -> logits `[B, T, V]` at targets `[B, T]`."""
    return model(batch["inputs"], rng=rng), batch["targets"], batch["weights"]


def _classification_forward(model, batch, rng):
    """inputs, mask `[B, T]` -> logits `[B, C]` at label `[B]`."""
    return model(batch["inputs"], batch["mask"], rng=rng), batch["label"], batch["weights"]


def mixup(batch: Batch, alpha: float, rng: Array) -> tuple[Array, Array, Array, Array]:
    """Mixup (Zhang et al., 2018) of an image batch: one lambda ~ Beta(alpha, alpha) per batch,
    each image mixed with a randomly permuted partner. Returns (mixed images `[B, H, W, C]`,
    labels `[2B]` (own, then partner's), weights `[2B]` (lambda * w, then (1 - lambda) * w), the
    permutation `[B]`): the weighted cross entropy over the duplicated logits is the mixup loss
    (with label smoothing applied to both targets), and the weights still sum to the batch's."""
    r_lambda, r_perm = jax.random.split(rng)
    lam = jax.random.beta(r_lambda, alpha, alpha)
    perm = jax.random.permutation(r_perm, batch["image"].shape[0])
    image = lam * batch["image"] + (1.0 - lam) * batch["image"][perm]
    weights = batch["weights"].astype(jnp.float32)
    labels = jnp.concatenate([batch["label"], batch["label"][perm]])
    return image, labels, jnp.concatenate([lam * weights, (1.0 - lam) * weights]), perm


def _image_classification_forward(model, batch, rng):
    """image `[B, H, W, C]` float -> logits `[B, classes]` at label `[B]`. Models whose settings
    have `mixup_alpha > 0` train on mixup batches (`mixup`: logits `[2B, classes]`); evaluation
    never mixes."""
    alpha = getattr(model.cfg, "mixup_alpha", 0.0)
    if rng is None or not alpha:
        return model(batch["image"], rng=rng), batch["label"], batch["weights"]
    r_mix, r_model = jax.random.split(rng)
    image, labels, weights, _ = mixup(batch, alpha, r_mix)
    logits = model(image, rng=r_model)
    return jnp.concatenate([logits, logits]), labels, weights


def _image_text_forward(model, batch, rng):
    """image `[B, H, W, C]` float, question and question_mask `[B, T]` -> logits `[B, classes]`
    at label `[B]`."""
    logits = model(batch["image"], batch["question"], batch["question_mask"], rng=rng)
    return logits, batch["label"], batch["weights"]
def _video_classification_forward(model, batch, rng):
    """video `[B, T, H, W, C]` float, frame_mask `[B, T]` -> logits `[B, classes]` at `label`."""
    return model(batch["video"], batch["frame_mask"], rng=rng), batch["label"], batch["weights"]


def _seq2seq_forward(model, batch, rng):
    """inputs `[B, S]`, decoder_inputs `[B, Tt]` -> logits `[B, Tt, V]` at targets `[B, Tt]`."""
    logits = model(batch["inputs"], batch["inputs_mask"], batch["decoder_inputs"], rng=rng)
    return logits, batch["targets"], batch["weights"]


def _mlm_forward(model, batch, rng):
    """An LM batch, corrupted here by BERT's 80/10/10 rule at `MLM_RATE` -> logits `[B, T, V+1]`
    at the chosen tokens (weights 1 there). Training draws the corruption from `rng`; evaluation
    (`rng` None) from a fixed key, so that every evaluation scores the same corrupted tokens."""
    real = batch["weights"] > 0  # An lm window's bytes are its targets; padding weighs 0.
    if rng is None:
        r_mask, r_model = jax.random.key(MLM_EVAL_SEED), None
    else:
        r_mask, r_model = jax.random.split(rng)
    mask_id = model.cfg.vocab_size - 1
    inputs, targets, weights = longformer.mask_tokens(
        batch["targets"], real, r_mask, mask_id=mask_id, vocab_size=model.cfg.vocab_size,
        rate=MLM_RATE)
    return model(inputs, real, rng=r_model), targets, weights


# ----------------------------------------------------------------------------------------------
# Sampling.


def _complete_lm(model, info, prompt: str, *, num_tokens: int, temperature: float,
                 top_k: int | None, seed: int) -> str:
    out = decoding.generate_lm(model, info.encode(prompt or "\n")[None], num_tokens,
                               window=info.seq_len, temperature=temperature, top_k=top_k,
                               seed=seed)
    return info.decode(out[0])


def _complete_seq2seq(model, info, prompt: str, **unused: Any) -> str:
    ids = info.encode(prompt)
    inputs = np.zeros((1, info.seq_len), np.int32)
    inputs[0, : len(ids)] = ids[: info.seq_len]
    out = decoding.generate_seq2seq(model, inputs, inputs > 0, info.target_len, info.bos_id,
                                    info.eos_id)
    return info.decode(out[0])


def _eval_rows(config, dataset, n: int) -> dict[str, np.ndarray]:
    return next(iter(dataset.eval_batches(config.data.eval_split, global_batch_size=max(n, 1),
                                          max_batches=1)))


def _lm_summary_samples(config, model, dataset, seed: int) -> list[str]:
    """Continuations of the first validation windows: 'prompt ⟶ continuation'."""
    info, n = dataset.info, config.num_samples
    prompt_len = min(config.sample_prompt_len, info.seq_len // 2)
    prompt = _eval_rows(config, dataset, n)["inputs"][:n, :prompt_len]
    out = decoding.generate_lm(model, prompt, config.sample_len, window=info.seq_len,
                               temperature=config.sample_temperature, top_k=config.sample_top_k,
                               seed=seed)
    return [info.decode(row[:prompt_len]) + " ⟶ " + info.decode(row[prompt_len:]) for row in out]


def _seq2seq_summary_samples(config, model, dataset, seed: int) -> list[str]:
    """Greedy outputs on the first validation inputs, beside their targets."""
    del seed
    info, n = dataset.info, config.num_samples
    batch = _eval_rows(config, dataset, n)
    out = decoding.generate_seq2seq(model, batch["inputs"][:n], batch["inputs_mask"][:n],
                                    info.target_len, info.bos_id, info.eos_id)
    return [f"input: {info.decode(x)}\noutput: {info.decode(y)}\ntarget: {info.decode(t)}"
            for x, y, t in zip(batch["inputs"][:n], out, batch["targets"][:n])]


# ----------------------------------------------------------------------------------------------
# The registry.

_TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("lm", "lm", ("inputs", "targets", "weights"), _lm_forward, bits_per_byte=True,
             causal=True, map_features=("inputs",), complete=_complete_lm,
             summary_samples=_lm_summary_samples),
        Task("classification", "classification", ("inputs", "mask", "label", "weights"),
             _classification_forward, map_features=("inputs", "mask")),
        Task("seq2seq", "seq2seq",
             ("inputs", "inputs_mask", "decoder_inputs", "targets", "weights"), _seq2seq_forward,
             map_features=("inputs", "inputs_mask"), complete=_complete_seq2seq,
             summary_samples=_seq2seq_summary_samples),
        Task("mlm", "lm", ("targets", "weights"), _mlm_forward, extra_vocab=1),
        Task("image_classification", "image_classification", ("image", "label", "weights"),
             _image_classification_forward),
        Task("image_text_classification", "image_text_classification",
             ("image", "question", "question_mask", "label", "weights"), _image_text_forward),
        Task("video_classification", "video_classification",
             ("video", "frame_mask", "label", "weights"), _video_classification_forward),
    ]
}


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_TASKS)


def get(name: str) -> Task:
    """The task registered as `name`; ValueError listing the known tasks otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None
