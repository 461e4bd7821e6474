#!/usr/bin/env bash
# Speed of the oldest against the newest supported (Python, JAX) pair, one leg after the other on
# the same machine: the speed benchmarks' Reformer LM training step (`python -m attnx.bench
# --config=configs/reformer_lm.py:wide`) and the mechanism table (`python -m attnx.bench --lengths=1024,4096`), then
# newest / oldest time ratios (above 1: the newer JAX is slower). Run it on an idle machine,
# after `bash .ci/run` has made the legs' venvs:
#
#     bash scripts/compare_legs.sh [OUT_DIR] [OLD_VENV] [NEW_VENV]   # defaults below
#
# Each leg's raw records land in OUT_DIR/<venv name>/{model,mechanisms}/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/compare_legs} old=${2:-.venv} new=${3:-.venv-py313}

for venv in "$old" "$new"; do
  dir="$out/$(basename "$venv")"
  echo "== $venv: $("$venv/bin/python" -c 'import sys, jax; print(sys.version.split()[0], "jax", jax.__version__)')"
  "$venv/bin/python" -m attnx.bench --config=configs/reformer_lm.py:wide --steps=10 --out="$dir/model"
  "$venv/bin/python" -m attnx.bench --lengths=1024,4096 --out="$dir/mechanisms"
done

"$old/bin/python" - "$out/$(basename "$old")" "$out/$(basename "$new")" <<'EOF'
"""Print newest / oldest time ratios of the two legs' records."""
import json
import pathlib
import sys

old, new = (pathlib.Path(p) for p in sys.argv[1:3])


def load(leg: pathlib.Path) -> tuple[float, dict[tuple[str, int, str], float]]:
    step_s = json.loads((leg / "model" / "model.json").read_text())["step_s"]
    times = {}
    for record in json.loads((leg / "mechanisms" / "bench.json").read_text())["records"]:
        for mode, timing in record["timings"].items():
            if timing.get("time_s"):
                times[(record["mechanism"], record["length"], mode)] = timing["time_s"]
    return step_s, times


(old_step, old_times), (new_step, new_times) = load(old), load(new)
print(f"\nnew / old time ({new.name} / {old.name}; above 1: the newer leg is slower)")
print(f"main job train step: {new_step / old_step:.3f}  ({old_step:.3f} s -> {new_step:.3f} s)")
for key in sorted(old_times.keys() & new_times.keys()):
    print(f"{key[0]:>12} {key[1]:>6} {key[2]:>8}: {new_times[key] / old_times[key]:.3f}")
EOF
