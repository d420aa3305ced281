#!/usr/bin/env bash
# Wait until every defense of DATASET has its robustness curve (the eval queues' logs say "done"),
# then execute notebook 04 for it (sanity checks, AutoAttack, figures) in the background:
#   setsid nohup tools/after_evals.sh mnist &
set -u
cd "$(dirname "$0")/.."
ds=$1
export CROSSHOLDER_SCRATCH=${CROSSHOLDER_SCRATCH:-$HOME/.cache/crossholder/scratch}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for def in none cross_lipschitz cross_holder adversarial; do
  until grep -q "done in" "logs/eval-$ds-$def.log" 2>/dev/null; do sleep 30; done
done
out=notebooks/04_robustness.ipynb
[ "$ds" = mnist ] || out=notebooks/runs/04_robustness-$ds.ipynb
.venv/bin/papermill --kernel crossholder --log-level WARNING --request-save-on-cell-execute \
  notebooks/04_robustness.ipynb "$out" -p profile cpu -p device cpu -p dataset "$ds" >> "logs/nb04-$ds.log" 2>&1 \
  && .venv/bin/python -m crossholder.notebooks strip "$out" >> "logs/nb04-$ds.log" 2>&1 \
  || echo "[queue] notebook 04 $ds failed" >> logs/queue.log
