#!/usr/bin/env bash
# Score selected grid points of one data set and defense one after the other, in the background, resumable:
#   setsid nohup tools/select_queue.sh fashion_mnist adversarial eps=1.0 eps=0.5 &
# Each point's training resumes from its last epoch; a scored point is cached and skipped.
# Log: logs/select-<dataset>-<defense>.log.
set -u
cd "$(dirname "$0")/.."
export CROSSHOLDER_SCRATCH=${CROSSHOLDER_SCRATCH:-$HOME/.cache/crossholder/scratch}
dataset=$1; defense=$2; shift 2
mkdir -p logs
args=()
for pt in "$@"; do args+=(--point "$pt"); done
.venv/bin/python -m crossholder.selection --dataset "$dataset" --defense "$defense" --threads 1 "${args[@]}" \
  >> "logs/select-$dataset-$defense.log" 2>&1 || echo "[queue] select $dataset/$defense failed" >> logs/queue.log
