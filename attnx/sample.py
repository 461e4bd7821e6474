r"""Generate text from a trained language model or seq2seq model.

    python -m attnx.sample --workdir=runs/transformer_lm --prompt="def main(" \
        [--num_tokens=200] [--temperature=0.8] [--top_k=40] [--seed=0]

The run's config is read from `WORKDIR/config.json` and the best (else the latest) checkpoint is
loaded. A dense decoder-only LM decodes incrementally with a key/value cache; other mechanisms
recompute a fixed window of `data.seq_len` tokens per generated token (they have no cache). A
seq2seq model decodes greedily from the encoded `--prompt`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

Array = jax.Array


def _choose(logits: Array, rng: Array, temperature: float, top_k: int | None) -> Array:
    """Sample ids `[B]` from logits `[B, V]`; temperature 0 means greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, -1)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, -1)


def generate_lm(model: nnx.Module, prompt: np.ndarray, num_tokens: int, *, window: int,
                temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                use_cache: bool | None = None) -> np.ndarray:
    """Continue `prompt` `[B, P]` by `num_tokens`: -> `[B, P + num_tokens]` (window-limited).

    Uses the key/value cache when the model has one and dense attention (`use_cache=None` picks
    it automatically); otherwise runs the model on a zero-padded window of `window` tokens (causal,
    so padding after position t never affects t).
    """
    batch, length = prompt.shape
    rng = jax.random.key(seed)
    if use_cache is None:
        use_cache = hasattr(model, "init_caches") and model.cfg.attention == "dense"
    if use_cache:
        total = length + num_tokens
        caches = model.init_caches(batch, max(total, 1))
        decode = nnx.jit(lambda m, ids, c: m.decode(ids, c))
        logits, caches = decode(model, jnp.asarray(prompt), caches)
        out = [prompt]
        last = logits[:, -1]
        for t in range(num_tokens):
            token = _choose(last, jax.random.fold_in(rng, t), temperature, top_k)
            out.append(np.asarray(token)[:, None])
            if t + 1 < num_tokens:
                logits, caches = decode(model, token[:, None].astype(jnp.int32), caches)
                last = logits[:, -1]
        return np.concatenate(out, axis=1)
    if length >= window:
        prompt = prompt[:, -(window - 1):]
        length = prompt.shape[1]
    buffer = np.zeros((batch, window), np.int32)
    buffer[:, :length] = prompt
    forward = nnx.jit(lambda m, ids: m(ids))
    end = min(window, length + num_tokens)
    for t in range(length, end):
        logits = forward(model, jnp.asarray(buffer))[:, t - 1]
        buffer[:, t] = np.asarray(_choose(logits, jax.random.fold_in(rng, t), temperature, top_k))
    return buffer[:, :end]


def generate_seq2seq(model: nnx.Module, inputs: np.ndarray, inputs_mask: np.ndarray,
                     target_len: int, bos_id: int, eos_id: int | None) -> np.ndarray:
    """Greedy decoding: inputs `[B, S]` -> output ids `[B, target_len]` (after BOS)."""
    batch = inputs.shape[0]
    memory = nnx.jit(lambda m, x, mask: m.encode(x, mask))(model, inputs, inputs_mask)
    decode = nnx.jit(lambda m, ids, mem, mask: m.decode(ids, mem, mask))
    buffer = np.zeros((batch, target_len), np.int32)
    buffer[:, 0] = bos_id
    out = np.zeros((batch, target_len), np.int32)
    for t in range(target_len):
        token = np.asarray(jnp.argmax(decode(model, buffer, memory, inputs_mask)[:, t], -1))
        out[:, t] = token
        if t + 1 < target_len:
            buffer[:, t + 1] = token
        if eos_id is not None and (out[:, : t + 1] == eos_id).any(1).all():
            break
    return out


def samples_for_summary(config, graphdef, params, dataset, *, seed: int) -> list[str]:
    """A few samples for TensorBoard: LM continuations of validation text, or seq2seq outputs."""
    info = dataset.info
    model = nnx.merge(graphdef, jax.device_get(params))
    batch = next(iter(dataset.eval_batches(config.data.eval_split, global_batch_size=max(
        config.num_samples, 1), max_batches=1)))
    texts = []
    if info.kind == "lm":
        prompt_len = min(config.sample_prompt_len, info.seq_len // 2)
        prompt = batch["inputs"][: config.num_samples, :prompt_len]
        out = generate_lm(model, prompt, config.sample_len, window=info.seq_len,
                          temperature=config.sample_temperature, top_k=config.sample_top_k,
                          seed=seed)
        for row in out:
            texts.append(info.decode(row[:prompt_len]) + " ⟶ " + info.decode(row[prompt_len:]))
    else:
        n = config.num_samples
        out = generate_seq2seq(model, batch["inputs"][:n], batch["inputs_mask"][:n],
                               info.target_len, info.bos_id, info.eos_id)
        for x, y, t in zip(batch["inputs"][:n], out, batch["targets"][:n]):
            texts.append(f"input: {info.decode(x)}\noutput: {info.decode(y)}\n"
                         f"target: {info.decode(t)}")
    return texts


def main(argv) -> None:
    from absl import flags, logging

    from attnx import checkpoints, data, models
    from attnx.train import abstract_state

    del argv
    logging.set_verbosity(logging.WARNING)  # keep Orbax's INFO lines out of the output
    f = flags.FLAGS
    path = os.path.join(f.workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"--workdir={f.workdir!r} holds no config.json: is it a run directory?")
    with open(path) as fh:
        config = ml_collections.ConfigDict(json.load(fh))
    task = models.get_entry(config.model.name).task
    if task not in ("lm", "seq2seq"):
        raise ValueError(f"sampling needs an LM or seq2seq run; {f.workdir!r} trained "
                         f"{config.model.name!r}, a {task!r} model")
    dataset = data.build(config.data, seed=config.seed)
    info = dataset.info
    graphdef, state_shape = abstract_state(config, info)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    manager = checkpoints.Manager(f.workdir)
    found = manager.restore_params(state_shape, jax.tree.map(lambda _: device, state_shape))
    manager.close()
    if found is None:
        raise ValueError(f"no checkpoint in {f.workdir!r}")
    params, which, step = found
    model = nnx.merge(graphdef, params)
    print(f"# {which} checkpoint, step {step}", flush=True)
    if task == "lm":
        prompt = info.encode(f.prompt or "\n")[None]
        out = generate_lm(model, prompt, f.num_tokens, window=info.seq_len,
                          temperature=f.temperature, top_k=f.top_k or None, seed=f.seed)
        print(info.decode(out[0]))
    else:
        ids = info.encode(f.prompt)[None]
        inputs = np.zeros((1, info.seq_len), np.int32)
        inputs[0, : ids.shape[1]] = ids[0, : info.seq_len]
        out = generate_seq2seq(model, inputs, inputs > 0, info.target_len, info.bos_id,
                               info.eos_id)
        print(info.decode(out[0]))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "Run directory of a trained model.", required=True)
    flags.DEFINE_string("prompt", "", "Text to continue (LM) or to transform (seq2seq).")
    flags.DEFINE_integer("num_tokens", 200, "Tokens to generate (LM).")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 = greedy.")
    flags.DEFINE_integer("top_k", 40, "Sample among the k most likely tokens; 0 = all.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    app.run(main)
