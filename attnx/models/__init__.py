"""Models by name: each entry names its task (`attnx.tasks`), its Flax NNX class and the frozen
dataclass of its settings; `build` turns the `config.model` ConfigDict into a model.

The data fills the settings a model cannot know from its config: `vocab_size`, `num_classes`,
`image_shape`, `clip_shape` (whichever fields the settings dataclass declares). A model's
forward for a batch is its task's (`attnx.tasks.get(entry.task).forward`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from attnx.models import (
    cnn,
    longformer,
    lstm,
    maxvit,
    multimodal,
    reformer,
    transformer,
    video,
    vit,
)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model: its task, class, settings dataclass, and the positions it adds to its input
    (`prefix_tokens`: a classifier's [CLS]), which the input must leave room for in `max_len`."""

    task: str
    model_cls: Callable[..., nnx.Module]
    config_cls: type
    prefix_tokens: int = 0


MODELS: dict[str, ModelEntry] = {
    "transformer_lm": ModelEntry("lm", transformer.DecoderLM, transformer.TransformerConfig),
    "transformer_classifier": ModelEntry(
        "classification", transformer.EncoderClassifier, transformer.TransformerConfig,
        prefix_tokens=1),
    "transformer_seq2seq": ModelEntry(
        "seq2seq", transformer.EncoderDecoder, transformer.TransformerConfig),
    "reformer_lm": ModelEntry("lm", reformer.ReformerLM, reformer.ReformerConfig),
    "longformer_classifier": ModelEntry(
        "classification", transformer.EncoderClassifier, longformer.LongformerConfig,
        prefix_tokens=1),
    "lstm_classifier": ModelEntry("classification", lstm.LSTMClassifier, lstm.LSTMConfig),
    "longformer_mlm": ModelEntry("mlm", longformer.LongformerMLM, longformer.LongformerConfig),
    "cnn_classifier": ModelEntry("image_classification", cnn.ConvNet, cnn.ConvNetConfig),
    "maxvit": ModelEntry("image_classification", maxvit.MaxViT, maxvit.MaxViTConfig),
    "vit": ModelEntry("image_classification", vit.ViT, vit.ViTConfig),
    "multimodal": ModelEntry("image_text_classification", multimodal.MultimodalClassifier,
                             multimodal.MultimodalConfig),
    "video_transformer": ModelEntry("video_classification", video.VideoTransformer,
                                    video.VideoConfig),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_settings(model_config, *, dtype: str, **data_fields: Any):
    """The model's settings dataclass from `config.model` and the data's `data_fields`
    (`vocab_size`, `num_classes`, `image_shape`, `clip_shape`; those the dataclass declares and
    that are not None). Errors name the offending field."""
    entry = get_entry(model_config.name)
    if dtype not in DTYPES:
        raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    given = {k: v for k, v in model_config.to_dict().items() if k != "name"}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"config.model has fields {unknown} that model {model_config.name!r} does "
                         f"not take; it takes "
                         f"{sorted(fields - {'vocab_size', 'image_shape', 'clip_shape', 'dtype'})}")
    given.update({k: v for k, v in data_fields.items() if k in fields and v is not None},
                 dtype=DTYPES[dtype])
    for key in ("attention_options",):
        if key in given and given[key] is None:
            given[key] = {}
    return entry.config_cls(**given)


def build(model_config, *, dtype: str = "float32", seed: int = 0, **data_fields: Any
          ) -> nnx.Module:
    """Instantiate `config.model` for data described by `data_fields` (see `model_settings`)."""
    settings = model_settings(model_config, dtype=dtype, **data_fields)
    return get_entry(model_config.name).model_cls(settings, rngs=nnx.Rngs(params=seed))
