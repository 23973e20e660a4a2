#!/usr/bin/env bash
# Claims (Goodfellow et al. 2015): the fast gradient sign method x + eps sign(grad_x J) fools a trained net with a
# small, visually minor eps, its accuracy falling as eps grows (Sec. 4); training on a mix of clean and FGSM examples
# (adversarial training, Sec. 6) makes the net far more robust to the attack.
# Default budget (MNIST-5k, 2-core CPU): ResNet-20, 3 epochs, plain (adversarial_eps 0) vs adversarially trained
# (eps 0.1, half of each batch), 3 seeds = 6 trials (search_spaces/adversarial_training.yaml); then every trial's
# final checkpoint is attacked on the whole test split at eps 0.05, 0.1, 0.2, 0.3 (python -m orchestrator.inspect,
# which logs fgsm_test_accuracy_eps* and the images into the trial's own run), and the table is read back.
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_fgsm_$(date +%Y%m%d_%H%M%S)"
EPS=(0.05 0.1 0.2 0.3)
repro_space adversarial_training
# The experiment's finished trial runs (child runs of the sweep), one id per line.
RUNS=$(python - "$EXP" <<'PY'
import sys

import mlflow

runs = mlflow.search_runs(experiment_names=[sys.argv[1]], output_format="pandas")
trials = runs[runs["tags.mlflow.parentRunId"].notna() & (runs["status"] == "FINISHED")]
print("\n".join(trials["run_id"]))
PY
)
for run in $RUNS; do
  python -m orchestrator.inspect "$run" --fgsm "${EPS[@]}" --saliency 8
done
python repro/summarize.py "$EXP" --by adversarial_eps \
  --metrics test_error fgsm_test_accuracy_eps0 "${EPS[@]/#/fgsm_test_accuracy_eps}" --pair-by adversarial_eps
