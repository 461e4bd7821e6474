r"""Reformer language model on `pystdlib` (the Python standard library, as bytes), 4,096-byte windows.

    python -m attnx.train --config=configs/reformer_lm.py
    python -m attnx.train --config=configs/reformer_lm.py:smoke          # < 1 min on 2 CPU cores
    python -m attnx.train --config=configs/reformer_lm.py:enwik8 --config.data.path=/data/enwik8

Arguments (comma separated): `smoke` (tiny and fast), `wide` (the earlier main job: d_model 256,
4 heads of 64, d_ff 1024, 600 steps at 1e-3; the model the speed benchmarks time), `enwik8` (the
paper's enwik8-64K model: 12 layers, d_model 1024, d_ff 4096, 8 heads, 65,536-byte windows,
reading the user's enwik8 file through the `textfile` dataset; for accelerators).
Default: 4 reversible layers (local, lsh, local, lsh), d_model 128, 4 heads of 32, d_ff 512,
chunks of 64, 2 hash rounds, 64 buckets, axial positions (64, 64); batch 1, 1,000 steps at
learning rate 2e-3 (9-12 minutes on 2 otherwise idle CPU cores; see
experiments/reformer_lm/README.md, which also keeps the earlier d_model 256 model as the
`:wide` variant the speed benchmarks use).
"""

import ml_collections

from attnx import config_lib
from attnx.attention import registry
from attnx.data import default_data_config


def reformer_model(**overrides) -> ml_collections.ConfigDict:
    """`config.model` for `reformer_lm` with every field present (overridable from the flags)."""
    fields = dict(
        name="reformer_lm", d_model=128, num_heads=4, d_ff=512,
        head_dim=ml_collections.FieldReference(None, field_type=int),
        attn_layers=("local", "lsh", "local", "lsh"),
        lsh_options=ml_collections.ConfigDict(registry.get("lsh").preset("reformer_lm")),
        local_options=ml_collections.ConfigDict(registry.get("local").preset("reformer_lm")),
        # Evaluation-time overrides of lsh_options; None = as in training.
        eval_lsh_options=ml_collections.ConfigDict({
            key: ml_collections.FieldReference(None, field_type=int)
            for key in ("n_hashes", "chunk_len", "chunks_before", "chunks_after")}),
        axial_shape=(64, 64), axial_dims=(32, 96),
        ff_chunk_len=ml_collections.FieldReference(None, field_type=int),
        dropout_rate=0.0, attention_dropout=0.0, activation="relu", reversible=True)
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, smoke=False, enwik8=False, wide=False)
    config = config_lib.base_config()
    config.data = default_data_config(name="pystdlib", seq_len=4096)
    config.model = reformer_model()
    config_lib.set_schedule(config, steps=1000, every=200, warmup_steps=100, batch_size=1,
                            eval_batch_size=1, eval_batches=16, log_every=20)
    config.optimizer.learning_rate = 2e-3
    config.best_metric = "bits_per_byte"
    config.num_samples = 1
    config.sample_len = 64
    # TensorBoard's Images tab: each layer's attention on the first 512 bytes of the first
    # validation window (local layers' bands, LSH layers' sorted chunks).
    config.attention_maps = True
    config.attention_map_len = 512
    if arg.wide:
        # The main job until 2026-12-01 and the speed benchmarks' model (3.24M parameters).
        config.model.update(d_model=256, d_ff=1024, axial_dims=(64, 192))
        config_lib.set_schedule(config, steps=600, every=300, warmup_steps=100, batch_size=1,
                                eval_batch_size=1, eval_batches=16, log_every=20)
        config.optimizer.learning_rate = 1e-3
    if arg.smoke:
        config.data.seq_len = 256
        config.model.update(d_model=64, num_heads=2, d_ff=128, attn_layers=("local", "lsh"),
                            axial_shape=(16, 16), axial_dims=(16, 48))
        config.model.lsh_options.update(n_buckets=8, chunk_len=32)
        config.model.local_options.chunk_len = 32
        config_lib.set_schedule(config, steps=30, every=15, warmup_steps=5, batch_size=4,
                                eval_batch_size=4, log_every=10, eval_batches=2)
        config.sample_len = 8
        config.sample_prompt_len = 8
    if arg.enwik8:
        # Kitaev et al. (2020), enwik8-64K: 12 layers, d_model 1024, d_ff 4096, 8 heads of 128,
        # LSH chunks of 128 with 4 hash rounds (8 in the paper's best run), axial positions.
        config.data = default_data_config(name="textfile", seq_len=65536)
        config.model.update(d_model=1024, num_heads=8, d_ff=4096, attn_layers=("lsh",) * 12,
                            axial_shape=(128, 512), axial_dims=(256, 768), ff_chunk_len=4096,
                            dropout_rate=0.1)
        config.model.lsh_options.update(n_hashes=4, n_buckets=1024, chunk_len=128)
        config.model.local_options.chunk_len = 128
        config_lib.set_schedule(config, steps=100_000, every=5000, warmup_steps=8000, batch_size=8,
                                eval_batch_size=8, log_every=100)
        config.optimizer.learning_rate = 1e-3
        config.optimizer.schedule = "rsqrt"
        config.num_samples = 0
    return config
