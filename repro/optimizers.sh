#!/usr/bin/env bash
# Optimizers compared at tuned learning rates (issue 15, part 2; CS231n "Neural Networks Part 3"): the two-layer MLP on
# MNIST-5k, 5 epochs, constant rate, no weight decay. Six update rules: SGD, SGD + momentum 0.9, SGD + Nesterov
# momentum 0.9, Adagrad, RMSProp, Adam.
# 1. Tuning, one seed: each rule at the nine rates 1e-4..1 of search_spaces/optimizers.yaml (54 trials) into
#    ${PREFIX}_tune; val_error picks each rule's rate.
# 2. Each rule at its picked rate with 3 seeds (18 trials) into ${PREFIX}: the table (mean ± std of val and test
#    error), and the compare report with the val_error and train_loss curves of each rule.
# Env: SEEDS (stage 2, default 3) EPOCHS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI; the report goes to $REPORT_DIR
# (default repro_reports/optimizers).
source "$(dirname "$0")/_sweep.sh"
PREFIX="repro_optimizers_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/optimizers}
RULES=(optimizer,momentum,nesterov)
EXP="${PREFIX}_tune"
SEEDS=1 repro_space optimizers
SEEDS=1 repro_space optimizers optimizer=sgd momentum=0.9 nesterov=false
SEEDS=1 repro_space optimizers optimizer=sgd momentum=0.9 nesterov=true
python -m orchestrator.compare "$EXP" --by "$RULES,lr" --best-per "$RULES" --x lr --curves-of train_loss \
  --csv "$REPORT_DIR/tuning.csv" --html "$REPORT_DIR/tuning.html" --plots "$REPORT_DIR/tuning" --top 60
EXP="$PREFIX"
# Each rule's best rate on val_error (groups are ranked best first; one seed, so a group is one trial).
python - "$REPORT_DIR/tuning.csv" > "$REPORT_DIR/tuned.txt" <<'PY'
import sys
import pandas as pd
groups = pd.read_csv(sys.argv[1]).groupby(["optimizer", "momentum", "nesterov"], sort=False).head(1)
for row in groups.itertuples():
    print(f"optimizer={row.optimizer} momentum={row.momentum} nesterov={str(row.nesterov).lower()} lr={row.lr}")
PY
cat "$REPORT_DIR/tuned.txt"
while read -r -a pins; do
  repro_space optimizers "${pins[@]}"
done < "$REPORT_DIR/tuned.txt"
python -m orchestrator.compare "$EXP" --by "$RULES" --curves-of train_loss \
  --csv "$REPORT_DIR/tuned.csv" --html "$REPORT_DIR/tuned.html" --plots "$REPORT_DIR/tuned"
python repro/summarize.py "$EXP" --by optimizer momentum nesterov lr --metrics train_loss val_error test_error
