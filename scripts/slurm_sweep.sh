#!/bin/bash
# A sweep on a SLURM cluster, run from a login node: one submitit job per unfinished run (one
# job array, at most --parallel running), each run in runs/lra_listops_sweep/<run name>.
#
#   bash scripts/slurm_sweep.sh [configs/x.py[:arg]] [more python -m attnx.sweep flags]
#
# The command returns once the jobs are submitted. A job cut off by its time limit is requeued
# by submitit and resumes from the run's last checkpoint; running this script again submits only
# the runs that are not finished. When the jobs have ended:
#
#   python -m attnx.sweep --summarize --workdir=runs/lra_listops_sweep
#   tensorboard --logdir runs/lra_listops_sweep      # HParams tab: the runs side by side
#
# --slurm_nodes=2 --slurm_tasks_per_node=4 --slurm_gpus_per_node=4 makes each run a multi-host
# run (jax.distributed is initialised from SLURM's variables). Adapt partition and resources.
set -euo pipefail

CONFIG=${1:-configs/lra_listops.py}
shift || true
source .venv/bin/activate
python -m attnx.sweep --config="$CONFIG" --workdir="${WORKDIR:-runs/lra_listops_sweep}" \
    --launcher=slurm --parallel=8 \
    --slurm_timeout_min=240 --slurm_gpus_per_node=1 --slurm_cpus_per_task=8 \
    --slurm_setup='source .venv/bin/activate' "$@"
