r"""The Reformer paper's duplication task (Table 2): copy a random word, `0 w 0 w`.

    python -m attnx.train --config=configs/reformer_duplication.py:train=lsh2
    python -m attnx.train --config=configs/reformer_duplication.py:cpu,train=lsh2 \
        --workdir=runs/dup_cpu_lsh2                                     # CPU budget, length 256
    python -m attnx.train --mode=eval --split=test --workdir=runs/dup_cpu_lsh2 \
        --config=configs/reformer_duplication.py:cpu,train=lsh2,eval=lsh8   # another attention

Arguments (comma separated):
  train=full|lsh1|lsh2|lsh4  attention while training: Full (shared-QK attention over the whole
      sequence, with the same -1e5 self logit) or LSH with 1, 2 or 4 hash rounds.
  eval=same|full|lsh1|lsh2|lsh4|lsh8  attention at evaluation (periodic and `--mode=eval`); the
      parameters are the same whatever the attention, so any trained model can be evaluated with any.
  cpu  length 256, batch 16, 1,000 steps: at most about 30 minutes on 2 CPU cores (see
      experiments/reformer_duplication/README.md).
  smoke  length 32, a few steps.
Default: the paper's setting: length 1024 (w of 511 symbols from 1..127), a 1-layer model with
d_model = d_ff = 256 and 4 heads, loss and accuracy on the second half only; 150K steps as in the
paper, batch 64 (an accelerator job).
"""

import ml_collections

from attnx import config_lib
from attnx.attention import registry
from attnx.data import default_data_config

_HASHES = {"lsh1": 1, "lsh2": 2, "lsh4": 4, "lsh8": 8}
# Per length: LSH chunk length and number of buckets (about 2 * length / chunk_len).
_SIZES = {1024: (64, 32), 256: (32, 16), 32: (8, 8)}


def attention_options(kind: str, length: int) -> dict:
    """LSH options for `kind` ('full' or 'lshN') at `length`."""
    chunk_len, n_buckets = _SIZES[length]
    if kind == "full":  # One round, one chunk holding the whole sequence.
        return dict(n_hashes=1, n_buckets=n_buckets, chunk_len=length, chunks_before=0,
                    chunks_after=0)
    if kind not in _HASHES:
        raise ValueError(f"attention must be 'full' or one of {sorted(_HASHES)}, got {kind!r}")
    return dict(n_hashes=_HASHES[kind], n_buckets=n_buckets, chunk_len=chunk_len,
                chunks_before=1, chunks_after=0)


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, train="lsh1", eval="same", cpu=False, smoke=False)
    if arg.train == "lsh8":
        raise ValueError("train must be full, lsh1, lsh2 or lsh4 (lsh8 is for eval only)")
    length = 32 if arg.smoke else 256 if arg.cpu else 1024
    config = config_lib.base_config()
    config.data = default_data_config(
        name="duplication", seq_len=length,
        builder_config={32: "tiny", 256: "len256", 1024: "len1024"}[length])
    eval_options = {key: ml_collections.FieldReference(None, field_type=int)
                    for key in ("n_hashes", "chunk_len", "chunks_before", "chunks_after")}
    if arg.eval != "same":
        eval_options.update({k: v for k, v in attention_options(arg.eval, length).items()
                             if k in eval_options})
    config.model = ml_collections.ConfigDict(dict(
        name="reformer_lm", d_model=256, num_heads=4, d_ff=256,
        head_dim=ml_collections.FieldReference(None, field_type=int), attn_layers=("lsh",),
        lsh_options=ml_collections.ConfigDict(attention_options(arg.train, length)),
        local_options=ml_collections.ConfigDict(registry.get("local").preset("reformer_lm")),
        eval_lsh_options=ml_collections.ConfigDict(eval_options),
        # A (1, length) grid makes the axial encoding a learned table of absolute positions: the
        # one layer must pair position t with t - length/2 + 1 through a symmetric shared-QK
        # similarity, which a factored (rows x columns) grid makes much harder to learn.
        axial_shape=(1, length), axial_dims=(128, 128),
        ff_chunk_len=ml_collections.FieldReference(None, field_type=int),
        dropout_rate=0.0, attention_dropout=0.0, activation="relu", reversible=True))
    config_lib.set_schedule(config, steps=150_000, every=5000, warmup_steps=1000, batch_size=64,
                            eval_batch_size=64, log_every=100)
    config.eval_batches = ml_collections.FieldReference(None, field_type=int)  # whole split
    config.optimizer.learning_rate = 1e-3
    config.best_metric = "accuracy"
    config.best_mode = "max"
    config.num_samples = 0  # symbols, not text
    if arg.cpu:
        config_lib.set_schedule(config, steps=1000, every=250, warmup_steps=100, batch_size=16,
                                eval_batch_size=100, log_every=50)
    if arg.smoke:
        config.model.update(d_model=32, d_ff=32, num_heads=2, axial_dims=(16, 16))
        config_lib.set_schedule(config, steps=20, every=10, warmup_steps=2, batch_size=8,
                                eval_batch_size=16, log_every=10, eval_batches=2)
    return config


def get_sweep(arg: str | None = None):
    """The training runs of experiments/reformer_duplication: full attention and LSH with 1, 2
    and 4 hash rounds (on the variant `arg` names, e.g. `cpu`); each is then evaluated with
    several `eval=` settings by `--mode=eval`, as that README shows."""
    del arg
    return [{":train": train} for train in ("full", "lsh1", "lsh2", "lsh4")]
