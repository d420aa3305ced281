#!/usr/bin/env bash
# Train several defenses of one data set one after the other, in the background, resumable:
#   setsid nohup tools/train_queue.sh mnist cpu cross_holder adversarial &
# Each run resumes from its last epoch if it was interrupted; logs go to logs/train-<dataset>-<defense>.log.
set -u
cd "$(dirname "$0")/.."
# resume state outside the work tree, so it survives a fresh checkout (override to taste)
export CROSSHOLDER_SCRATCH=${CROSSHOLDER_SCRATCH:-$HOME/.cache/crossholder/scratch}
dataset=$1; profile=$2; shift 2
mkdir -p logs
for defense in "$@"; do
  .venv/bin/python -m crossholder.training --dataset "$dataset" --defense "$defense" --profile "$profile" \
    --threads 1 >> "logs/train-$dataset-$defense.log" 2>&1 || echo "[queue] $dataset/$defense failed" >> logs/queue.log
done
