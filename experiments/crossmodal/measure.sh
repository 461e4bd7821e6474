#!/usr/bin/env bash
# Median train-step time and parameters of each block type of configs/crossmodal_qa.py, on this
# machine: the jitted, donated train step of each config on its own batches, 5 warm-up steps,
# then the median of 50. Run it on an otherwise idle machine.
#   experiments/crossmodal/measure.sh [STEPS]
set -euo pipefail
python - "${1:-50}" <<'PY'
import importlib.util
import statistics
import sys
import time

import jax

from attnx import data, optim, train
from attnx import state as state_lib

spec = importlib.util.spec_from_file_location("crossmodal_qa", "configs/crossmodal_qa.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
steps, warmup = int(sys.argv[1]), 5
print(f"| block | parameters | median step (ms) |  [{jax.devices()[0].device_kind}, "
      f"{jax.device_count()} device(s), {steps} steps]")
print("|---|---:|---:|")
for arg in ("cross", "co", "co,shared", "gated", "perceiver", "text_only", "image_only"):
    config = module.get_config(f"block={arg}")
    train.validate(config)
    dataset = data.build(config.data, seed=config.seed)
    task = state_lib.check_data(config, dataset.info)
    tx, schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
    graphdef, state, _ = state_lib.create(config, dataset.info, tx, train.data_mesh())
    step = jax.jit(train.make_train_step(graphdef, task, tx, schedule), donate_argnums=(0,))
    key, times = jax.random.key(0), []
    params = state_lib.num_params(state)
    for i in range(warmup + steps):
        batch = dataset.train_batch(i, global_batch_size=config.batch_size)
        start = time.perf_counter()
        state, metrics = step(state, batch, key)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    print(f"| {arg} | {params:,} | {1e3 * statistics.median(times):.1f} |", flush=True)
PY
