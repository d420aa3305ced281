#!/usr/bin/env bash
# Evaluate registered models one after the other in the background, resumable:
#   setsid nohup tools/eval_queue.sh cpu mnist/none fashion_mnist/none &
set -u
cd "$(dirname "$0")/.."
# resume state outside the work tree, so it survives a fresh checkout (override to taste)
export CROSSHOLDER_SCRATCH=${CROSSHOLDER_SCRATCH:-$HOME/.cache/crossholder/scratch}
profile=$1; shift
mkdir -p logs
for key in "$@"; do
  ds=${key%/*}; def=${key#*/}
  .venv/bin/python -m crossholder.evaluation --dataset "$ds" --defense "$def" --profile "$profile" --threads 1 \
    >> "logs/eval-$ds-$def.log" 2>&1 || echo "[queue] eval $key failed" >> logs/queue.log
done
