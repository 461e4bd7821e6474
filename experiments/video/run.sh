#!/usr/bin/env bash
# The runs of experiments/video/README.md, one after another: each block type (and the
# single-frame baseline) trains 1,000 steps on moving_digits/small, then its best validation
# checkpoint is evaluated on the test split; the table of test accuracies is printed at the end.
#   experiments/video/run.sh [RUNS_DIR]        (default runs/video)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs/video}
python=${PYTHON:-python}

source experiments/video/rows.sh
for name in "${names[@]}"; do
  # shellcheck disable=SC2086  # some runs add an override to their config argument
  "$python" -m attnx.train --config=${args[$name]} --workdir="$runs/$name"
  # shellcheck disable=SC2086
  "$python" -m attnx.train --config=${args[$name]} --workdir="$runs/$name" --mode=eval \
      --split=test
done
"$python" - "$runs" "${names[@]}" <<'PY'
import json, sys
runs, names = sys.argv[1], sys.argv[2:]
print("| run | test accuracy (%) | best checkpoint step |")
print("|---|---:|---:|")
for name in names:
    with open(f"{runs}/{name}/eval_test.json") as f:
        result = json.load(f)
    print(f"| {name} | {100 * result['accuracy']:.1f} | {result['step']} |")
PY
