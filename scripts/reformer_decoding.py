"""How far the Reformer's incremental decoding is from full recomputation, and how fast it samples.

    python scripts/reformer_decoding.py --workdir=runs/reformer_lm

On the first validation window of a trained run: the prompt (`--prompt_len` bytes) goes through
`prefill`, then the window's true next bytes are fed one at a time through `decode` (teacher
forcing). At `--positions` evenly spaced steps the next-byte distribution is compared with full
recomputation, the model run on the whole prefix so far (what a sampler without caches computes):
KL(full || cached) in bits, top-1 agreement, and the true next byte's bits under each. Local layers
decode exactly; LSH layers follow HF's decoding rule (`attnx.attention.lsh.decode_step`), so the
gap is that rule's. Then `--tokens` bytes are sampled twice, through the caches and by windowed
recomputation (`use_cache=False`), and both wall times (compilation included) are printed.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from attnx import decoding, sample

flags.DEFINE_string("workdir", None, "A trained run of a Reformer LM (e.g. runs/reformer_lm).")
flags.DEFINE_integer("prompt_len", 256, "Bytes of the window given as the prompt.")
flags.DEFINE_integer("steps", 512, "Bytes decoded one at a time after the prompt.")
flags.DEFINE_integer("positions", 16, "Steps compared with full recomputation (each compiles).")
flags.DEFINE_integer("tokens", 200, "Bytes sampled for the timing.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def _bits(log_p: np.ndarray) -> np.ndarray:
    return -log_p / np.log(2)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
    config = sample.read_config(FLAGS.workdir)
    dataset, _, model = sample.load_run(config, FLAGS.workdir)
    if not getattr(model, "supports_decoding", False):
        raise SystemExit(f"{config.model.name} does not decode incrementally")
    window = next(iter(dataset.eval_batches(config.data.eval_split, global_batch_size=1,
                                            max_batches=1)))["inputs"][:1]
    prompt_len, steps = FLAGS.prompt_len, FLAGS.steps
    if prompt_len + steps > window.shape[1]:
        raise SystemExit(f"--prompt_len + --steps must fit the window of {window.shape[1]}")
    total = prompt_len + steps
    prefill = nnx.jit(lambda m, ids: m.prefill(ids, total))
    decode = nnx.jit(lambda m, ids, c: m.decode(ids, c))
    full = nnx.jit(lambda m, ids: m(ids)[:, -1])
    compared = set(np.linspace(0, steps - 1, FLAGS.positions).astype(int).tolist())

    logits, caches = prefill(model, jnp.asarray(window[:, :prompt_len]))
    kl, agree, bits_cached, bits_full = [], [], [], []
    for step in range(steps):
        t = prompt_len + step  # logits predict byte t from bytes 0 .. t-1
        if step in compared:
            cached = jax.nn.log_softmax(logits[0, -1])
            recomputed = jax.nn.log_softmax(full(model, jnp.asarray(window[:, :t]))[0])
            kl.append(float(jnp.sum(jnp.exp(recomputed) * (recomputed - cached))) / np.log(2))
            agree.append(int(jnp.argmax(cached) == jnp.argmax(recomputed)))
            target = int(window[0, t])
            bits_cached.append(_bits(float(cached[target])))
            bits_full.append(_bits(float(recomputed[target])))
        logits, caches = decode(model, jnp.asarray(window[:, t:t + 1]), caches)
    print(f"{config.model.name} ({', '.join(config.model.attn_layers)}), prompt {prompt_len} "
          f"bytes, {len(kl)} positions over the next {steps}:")
    print(f"  KL(full || cached): median {np.median(kl):.4f} bits, max {np.max(kl):.4f} bits")
    print(f"  top-1 agreement: {np.mean(agree):.0%}")
    print(f"  true next byte: {np.mean(bits_cached):.3f} bits cached, "
          f"{np.mean(bits_full):.3f} bits recomputed")

    prompt = window[:, :prompt_len]
    for use_cache in (True, False):
        start = time.perf_counter()
        decoding.generate_lm(model, prompt, FLAGS.tokens, window=config.data.seq_len,
                             temperature=0.8, top_k=None, use_cache=use_cache)
        how = "through the caches" if use_cache else "by windowed recomputation"
        print(f"  {FLAGS.tokens} bytes sampled {how}: {time.perf_counter() - start:.1f} s "
              "(compilation included)")


if __name__ == "__main__":
    app.run(main)
