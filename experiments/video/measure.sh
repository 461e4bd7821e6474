#!/usr/bin/env bash
# Median train-step time and temporary memory of each block type of experiments/video/README.md,
# one after another on an otherwise idle machine: `python -m attnx.bench --config=...` (the
# model-level benchmark: the config's jitted, donated train step on real moving_digits batches,
# 20 timed steps after 2 warm-up, memory as XLA plans it), each table saved under OUT/<run>.
#   experiments/video/measure.sh [OUT]        (default runs/video_bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/video_bench}
python=${PYTHON:-python}

source experiments/video/rows.sh
for name in "${names[@]}"; do
  echo "## $name"
  # shellcheck disable=SC2086  # some runs add an override to their config argument
  "$python" -m attnx.bench --config=${args[$name]} --steps=20 --out="$out/$name"
done
"$python" - "$out" "${names[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| run | step time, median (ms) | temporary memory (MiB) |")
print("|---|---:|---:|")
for name in names:
    with open(f"{out}/{name}/model.json") as f:
        r = json.load(f)
    memory = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}"
    print(f"| {name} | {1e3 * r['step_s']:.1f} | {memory} |")
PY
