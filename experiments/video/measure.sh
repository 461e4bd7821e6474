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

# The rows of the README's tables, in order, and their config arguments.
declare -a names=(joint divided factorized_heads factorized_encoder factorized_encoder_cls
                  keyframe_stride2 keyframe_learned2 single_frame)
declare -A args=(
  [joint]="configs/video_divided.py:block=joint"
  [divided]="configs/video_divided.py"
  [factorized_heads]="configs/video_divided.py:block=factorized_heads"
  [factorized_encoder]="configs/video_divided.py:block=factorized_encoder"
  [factorized_encoder_cls]="configs/video_divided.py:block=factorized_encoder --config.model.pool=cls"
  [keyframe_stride2]="configs/video_keyframe.py"
  [keyframe_learned2]="configs/video_keyframe.py:key_frames=learned:2"
  [single_frame]="configs/video_divided.py:block=joint --config.data.num_frames=1"
)
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
