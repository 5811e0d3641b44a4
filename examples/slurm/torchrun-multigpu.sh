#!/bin/bash
# Data-parallel zoft on all GPUs of one node: every rank holds the model, runs its shard of each batch, and the
# ranks exchange a few scalars per step (no gradient all-reduce). Rank 0 logs, evaluates and checkpoints; with the
# time-limit signal every rank stops at the same step and the job requeues and resumes.
# Submit: sbatch examples/slurm/torchrun-multigpu.sh
#SBATCH --job-name=zoft-dp
#SBATCH --nodes=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --mem=512G
#SBATCH --time=08:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@180
#SBATCH --output=logs/%x-%j.log
set -uo pipefail

GPUS=${SLURM_GPUS_ON_NODE:-8}
srun torchrun --standalone --nproc_per_node "$GPUS" -m zoft train --algo hizoo --model facebook/opt-13b \
    --task sst2 --steps 20000 --output-dir runs/hizoo-sst2-opt13b --resume
rc=$?
if [ "$rc" -eq 143 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
