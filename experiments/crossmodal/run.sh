#!/usr/bin/env bash
# Trains every row of experiments/crossmodal/README.md one after another (2,000 steps each), then
# evaluates each run's best validation checkpoint on the test split.
#   experiments/crossmodal/run.sh [RUNS_DIR]        (default runs/crossmodal)
set -euo pipefail
runs=${1:-runs/crossmodal}
for arg in block=cross block=co block=co,shared block=gated block=perceiver \
           block=text_only block=image_only; do
  name=${arg//[=,]/_}
  python -m attnx.train --config="configs/crossmodal_qa.py:$arg" --workdir="$runs/$name"
  python -m attnx.train --config="configs/crossmodal_qa.py:$arg" --workdir="$runs/$name" \
    --mode=eval --split=test
done
