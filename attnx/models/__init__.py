"""Models by name, and the one forward function the trainer needs for every task.

A model entry names its task ('lm', 'classification', 'seq2seq', 'mlm'), its Flax NNX class and the
frozen dataclass of its settings; `build` turns the `config.model` ConfigDict into a model. A masked
LM ('mlm') reads language-model data (`DATA_TASK`) and corrupts it itself, in `forward`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from attnx.models import longformer, lstm, reformer, transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    task: str
    model_cls: Callable[..., nnx.Module]
    config_cls: type


MODELS: dict[str, ModelEntry] = {
    "transformer_lm": ModelEntry("lm", transformer.DecoderLM, transformer.TransformerConfig),
    "transformer_classifier": ModelEntry(
        "classification", transformer.EncoderClassifier, transformer.TransformerConfig),
    "transformer_seq2seq": ModelEntry(
        "seq2seq", transformer.EncoderDecoder, transformer.TransformerConfig),
    "reformer_lm": ModelEntry("lm", reformer.ReformerLM, reformer.ReformerConfig),
    "longformer_classifier": ModelEntry(
        "classification", transformer.EncoderClassifier, longformer.LongformerConfig),
    "lstm_classifier": ModelEntry("classification", lstm.LSTMClassifier, lstm.LSTMConfig),
    "longformer_mlm": ModelEntry("mlm", longformer.LongformerMLM, longformer.LongformerConfig),
}

# The dataset task each model task reads (the same unless listed).
DATA_TASK = {"mlm": "lm"}
# Masked-LM corruption: the share of real tokens chosen, and the fixed key of evaluation batches.
MLM_RATE = 0.15
MLM_EVAL_SEED = 0

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_settings(model_config, *, vocab_size: int, num_classes: int | None, dtype: str):
    """The model's settings dataclass from `config.model`; errors name the offending field."""
    entry = get_entry(model_config.name)
    if dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    given = {k: v for k, v in model_config.to_dict().items() if k != "name"}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"config.model has fields {unknown} that model {model_config.name!r} does "
                         f"not take; it takes {sorted(fields - {'vocab_size', 'dtype'})}")
    given.update(vocab_size=vocab_size, dtype=DTYPES[dtype])
    if "num_classes" in fields and num_classes is not None:
        given["num_classes"] = num_classes
    for key in ("attention_options",):
        if key in given and given[key] is None:
            given[key] = {}
    return entry.config_cls(**given)


def data_task(model_name: str) -> str:
    """The task of the datasets that model `model_name` trains on."""
    task = get_entry(model_name).task
    return DATA_TASK.get(task, task)


def build(model_config, *, vocab_size: int, num_classes: int | None = None,
          dtype: str = "float32", seed: int = 0) -> nnx.Module:
    """Instantiate `config.model` for data with this vocabulary (and classes).

    A masked LM gets one id more than the data's vocabulary: its [MASK] token, id `vocab_size`.
    """
    if get_entry(model_config.name).task == "mlm":
        vocab_size += 1
    settings = model_settings(model_config, vocab_size=vocab_size, num_classes=num_classes,
                              dtype=dtype)
    return get_entry(model_config.name).model_cls(settings, rngs=nnx.Rngs(params=seed))


def forward(model: nnx.Module, task: str, batch: dict[str, Array], rng: Array | None):
    """Run `model` on a batch of `task`: -> (float32 logits, integer targets, float weights).

    lm: logits `[B, T, V]`, targets `[B, T]`; classification: `[B, C]`, `[B]`;
    seq2seq: `[B, Tt, V]`, `[B, Tt]`; mlm (on an lm batch): `[B, T, V + 1]` at the corrupted
    `targets` of the batch, weights 1 at the chosen tokens (`longformer.mask_tokens`, BERT's
    80/10/10 rule at `MLM_RATE`). Training draws the corruption from `rng`; evaluation (`rng`
    None) from a fixed key, so that every evaluation scores the same corrupted tokens.
    """
    if task == "lm":
        return model(batch["inputs"], rng=rng), batch["targets"], batch["weights"]
    if task == "classification":
        return model(batch["inputs"], batch["mask"], rng=rng), batch["label"], batch["weights"]
    if task == "seq2seq":
        logits = model(batch["inputs"], batch["inputs_mask"], batch["decoder_inputs"], rng=rng)
        return logits, batch["targets"], batch["weights"]
    if task == "mlm":
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
    raise ValueError(f"unknown task {task!r}")
