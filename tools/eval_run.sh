#!/usr/bin/env bash
# Robustness curve of a finished training run that is not registered yet, in the background, resumable:
#   setsid nohup tools/eval_run.sh cpu fashion_mnist cross_holder 76765d9209 &    (THREADS=2: two threads)
# The curve lands under the same identity notebook 04 asks for once the run is registered.
set -u
cd "$(dirname "$0")/.."
export CROSSHOLDER_SCRATCH=${CROSSHOLDER_SCRATCH:-$HOME/.cache/crossholder/scratch}
profile=$1; ds=$2; def=$3; rid=$4
mkdir -p logs
.venv/bin/python -m crossholder.evaluation --dataset "$ds" --defense "$def" --profile "$profile" --threads "${THREADS:-1}" \
  --run-id "$rid" >> "logs/eval-$ds-$def-$rid.log" 2>&1 || echo "[queue] eval $ds/$def/$rid failed" >> logs/queue.log
