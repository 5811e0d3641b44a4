#!/bin/bash
# One zoft run that survives the time limit: Slurm sends SIGTERM two minutes before it, zoft finishes the step,
# saves a checkpoint and exits 143, and the job requeues itself; the next start continues with --resume (which
# reproduces the uninterrupted run bit for bit). Submit: sbatch examples/slurm/train-requeue.sh
#SBATCH --job-name=zoft-train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=logs/%x-%j.log
set -uo pipefail

RECIPE=${RECIPE:-opt-13b/mezo-sst2}      # a shipped recipe by name (zoft recipes), or a YAML file
RUN=${RUN:-runs/mezo-sst2-opt13b}

# srun makes zoft a job step, so the time-limit signal reaches it (not only this shell)
srun zoft train "$RECIPE" --output-dir "$RUN" --resume
rc=$?
if [ "$rc" -eq 143 ]; then              # stopped by the signal with a checkpoint saved: continue in a new job
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
