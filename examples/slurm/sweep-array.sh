#!/bin/bash
# A hyperparameter grid as a Slurm array: `zoft sweep --print-commands` prints one `zoft train` command per grid
# point (each with its own --output-dir), and array task i runs line i. Each task resumes its point if it ran before
# and requeues itself at the time limit, so resubmitting the array finishes what is left. When all are done:
#   zoft sweep "$RECIPE" --grid lr=1e-6,1e-7 --grid seed=0,1 --output-dir runs/sweep --collect
# Submit with the array size = number of points: sbatch --array=0-3 examples/slurm/sweep-array.sh
#SBATCH --job-name=zoft-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=08:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=logs/%x-%A_%a.log
set -uo pipefail

RECIPE=${RECIPE:-opt-13b/mezo-sst2}
mapfile -t COMMANDS < <(zoft sweep "$RECIPE" --grid lr=1e-6,1e-7 --grid seed=0,1 --output-dir runs/sweep \
                        --print-commands)
COMMAND=${COMMANDS[$SLURM_ARRAY_TASK_ID]:?no grid point $SLURM_ARRAY_TASK_ID: the array is larger than the grid}

srun bash -c "$COMMAND --resume"
rc=$?
if [ "$rc" -eq 143 ]; then
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$rc"
