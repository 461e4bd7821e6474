"""Helpers for `configs/*.py`: big_vision-style config strings and flattening for hparams."""

from __future__ import annotations

from typing import Any

import ml_collections

from attnx.attention import registry
from attnx.data import default_data_config


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse `"attention=lsh,smoke"` against typed defaults.

    A bare word `smoke` sets a boolean default to True; `key=value` is converted to the type of
    the default. Unknown keys raise ValueError listing the known ones.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; "
                             f"known: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if not has_value:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            out[key] = value
        else:
            out[key] = type(default)(value)
    return out


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """`{'model.d_model': 256, ...}`: the config as a flat dict of leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def base_config() -> ml_collections.ConfigDict:
    """Trainer settings shared by every experiment; configs override what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
    c.batch_size = 16  # global, over all devices and processes
    c.eval_batch_size = 16
    c.grad_accum_steps = 1
    c.num_train_steps = 1000
    c.log_every = 20
    c.eval_every = 500
    c.eval_batches = ml_collections.FieldReference(20, field_type=int)  # None = whole split
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.best_metric = "loss"
    c.best_mode = "min"
    c.label_smoothing = 0.0
    c.num_samples = 2  # LM/seq2seq samples written to TensorBoard at each eval
    c.sample_len = 128
    c.sample_prompt_len = 64
    c.sample_temperature = 0.8
    c.sample_top_k = 40
    c.profile_steps = ml_collections.FieldReference(None, field_type=int)  # trace N steps
    c.attention_maps = False  # attention-map images in TensorBoard at each eval
    # ... drawn on the first N tokens of the first evaluation example (None: all of them).
    c.attention_map_len = ml_collections.FieldReference(None, field_type=int)
    # A step whose loss or gradient norm is not finite is never applied; then 'stop' ends the
    # run with an error naming the step, 'skip' goes on (skips counted in TensorBoard).
    c.on_nonfinite = "stop"
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01,
        schedule="cosine", warmup_steps=100,
        clip_norm=ml_collections.FieldReference(1.0, field_type=float),
        # Evaluate an exponential moving average of the weights with this decay (None: off).
        ema_decay=ml_collections.FieldReference(None, field_type=float)))
    return c


def set_schedule(config: ml_collections.ConfigDict, *, steps: int, every: int,
                 warmup_steps: int, **fields: Any) -> None:
    """Set a run's length: `steps` training steps, an evaluation and a checkpoint every `every`
    steps, `warmup_steps` of learning-rate warmup; `fields` set other top-level fields
    (`batch_size`, `eval_batch_size`, `eval_batches`, `log_every`, ...).

    Raises:
      ValueError: a field `config` does not have.
    """
    unknown = sorted(set(fields) - set(config.keys()))
    if unknown:
        raise ValueError(f"config has no fields {unknown}")
    config.num_train_steps = steps
    config.eval_every = config.checkpoint_every = every
    config.optimizer.warmup_steps = warmup_steps
    config.update(fields)


def lra_training(config: ml_collections.ConfigDict, *, steps: int, every: int,
                 warmup_steps: int, learning_rate: float) -> None:
    """The CPU-budget training of the LRA configs: batch 32, whole-split evaluations (batches of
    64) every `every` steps, model selection by validation accuracy, no samples."""
    set_schedule(config, steps=steps, every=every, warmup_steps=warmup_steps, batch_size=32,
                 eval_batch_size=64, eval_batches=None)
    config.best_metric = "accuracy"
    config.best_mode = "max"
    config.optimizer.learning_rate = learning_rate
    config.num_samples = 0


def transformer_model(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` for the Transformer family, with every field present (overridable)."""
    fields = dict(name=name, d_model=256, num_heads=4, num_layers=2, d_ff=1024, max_len=2048,
                  dropout_rate=0.0, attention_dropout=0.0, attention="dense",
                  attention_options=ml_collections.ConfigDict(), positional="sinusoidal",
                  norm="pre", activation="relu", pool="cls",
                  num_decoder_layers=ml_collections.FieldReference(None, field_type=int))
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def attention_options(mechanism: str, seq_len: int, *,
                      causal: bool = False) -> ml_collections.ConfigDict:
    """The registry's LRA preset of `mechanism` for attention over `seq_len` tokens (with [CLS],
    if any): the settings every LRA comparison here uses, so that mechanisms differ in attention
    only (`attnx/attention/registry.py` says what they are; none for dense and flash).

    Raises:
      ValueError: an unknown mechanism or a length below 1.
    """
    entry = registry.get(mechanism)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return ml_collections.ConfigDict(entry.preset("lra", length=seq_len, causal=causal))


def attention_dropout(mechanism: str, rate: float) -> float:
    """`rate`, or 0.0 for a mechanism without attention dropout (its registry entry says)."""
    return rate if registry.get(mechanism).supports_dropout else 0.0


def lra_classifier(model: str, attention: str, seq_len: int,
                   **sizes: Any) -> ml_collections.ConfigDict:
    """`config.model` of an LRA classifier over `seq_len` input tokens.

    `model='transformer'`: the encoder classifier with `attention` (any registry name) and its
    `attention_options` defaults (a mechanism with global tokens selects the
    `longformer_classifier` model, whose [CLS] is global); `sizes` override `transformer_model`'s fields. `model='lstm'`: the
    `lstm_classifier` baseline (attention is ignored) as wide as the transformer would be
    (`d_model` of `sizes`), one bidirectional layer; `sizes` keys it does not take are dropped.

    Raises:
      ValueError: an unknown model kind or attention mechanism.
    """
    if model == "lstm":
        d_model = sizes.get("d_model", 256)
        return ml_collections.ConfigDict(dict(
            name="lstm_classifier", d_model=d_model, hidden_size=d_model, num_layers=1,
            bidirectional=True, dropout_rate=sizes.get("dropout_rate", 0.0), pool="last"))
    if model != "transformer":
        raise ValueError(f"model must be 'transformer' or 'lstm', got {model!r}")
    with_globals = registry.get(attention).global_projections
    name = "longformer_classifier" if with_globals else "transformer_classifier"
    return transformer_model(
        name, attention=attention,
        attention_options=attention_options(attention, seq_len + 1), max_len=seq_len + 1,
        **sizes)


# The mechanisms LRA compares (registry names), each with its `attention_options` defaults.
LRA_MECHANISMS = ("dense", "flash", "lsh", "local", "longformer")


def lra_comparison() -> list[dict[str, str]]:
    """The LRA configs' `get_sweep`: one run per mechanism of `LRA_MECHANISMS`
    (`:attention=<name>`), then the LSTM baseline (`:model=lstm`)."""
    return [{":attention": name} for name in LRA_MECHANISMS] + [{":model": "lstm"}]


def pathfinder_image_training(config: ml_collections.ConfigDict, *, difficulty: str,
                              smoke: bool) -> None:
    """Data and schedule of the Pathfinder image configs (configs/{maxvit,vit,cnn}_pathfinder.py):
    `medium_32_<difficulty>` images (20,000 / 2,000 / 2,000) as `[32, 32, 1]` floats, turned by a
    random symmetry of the square in training (`data.dihedral_augment`; no symmetry changes
    whether the markers are joined); batch 32, AdamW lr 1e-3 with weight decay 0.05, 3,000 steps
    (60 warmup, cosine), whole-split validation every 500 steps, model selection by validation
    accuracy. `smoke`: the `tiny` images, 3 steps.

    Raises:
      ValueError: `difficulty` is not 'easy' or 'hard'.
    """
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}")
    config.data = default_data_config(name="pathfinder", builder_config=f"medium_32_{difficulty}",
                                      representation="image", dihedral_augment=True)
    lra_training(config, steps=3_000, every=500, warmup_steps=60, learning_rate=1e-3)
    config.optimizer.weight_decay = 0.05
    config.log_every = 250
    if smoke:
        config.data.builder_config = "tiny"
        set_schedule(config, steps=3, every=3, warmup_steps=1, batch_size=8, eval_batch_size=16,
                     eval_batches=1, log_every=1)


def video_training(config: ml_collections.ConfigDict, *, smoke: bool, ucf101: bool) -> None:
    """Data and schedule of the video configs (configs/video_*.py) on `moving_digits`: the
    `small` clips (8 frames of 16 x 16), batch 32, AdamW lr 2e-3, 1,000 steps (50 warmup,
    cosine), whole-split validation every 250 steps, model selection by validation accuracy.
    `smoke`: the `tiny` clips, 3 steps. `ucf101`: TFDS `ucf101/ucf101_1_256` by name (16 frames of
    256 x 256; needs the dataset prepared and TensorFlow), batch 64, 30,000 steps."""
    config.data = default_data_config(name="moving_digits", builder_config="small",
                                      representation="video", image_key="video")
    lra_training(config, steps=1_000, every=250, warmup_steps=50, learning_rate=2e-3)
    if smoke:
        config.data.builder_config = "tiny"
        set_schedule(config, steps=3, every=3, warmup_steps=1, batch_size=8, eval_batch_size=16,
                     eval_batches=1, log_every=1)
    if ucf101:
        config.data = default_data_config(name="ucf101", builder_config="ucf101_1_256",
                                          representation="video", image_key="video",
                                          num_frames=16, eval_split="test")
        set_schedule(config, steps=30_000, every=2_000, warmup_steps=2_500, batch_size=64,
                     eval_batch_size=64, eval_batches=None)
        config.optimizer.weight_decay = 0.05
