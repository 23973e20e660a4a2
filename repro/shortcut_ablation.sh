#!/usr/bin/env bash
# Claim: constant scaling (lambda = 0.5) and exclusive gating hurt optimization compared to identity shortcuts.
# Default budget (MNIST-5k, 2-core CPU): ResNet-110 with original units (as the paper), 5 epochs at batch 32 with
# the step warm-up and rates of the stochastic-depth repro (its Round D: about 1 h 45 min under load there; this
# script has NOT been run at this budget yet), 3 shortcuts x 3 seeds, 2 trials at a time.
# CIFAR-10 on GPUs (the paper, ResNet-110: identity 6.61%, scaling 0.5/0.5 12.35%, exclusive gating 8.70%):
#   EPOCHS=164 BATCHES=0 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/shortcut_ablation.sh
# Env: DEPTH EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI (as in preact_vs_original.sh).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_shortcut_ablation_$(date +%Y%m%d_%H%M%S)"
repro_sweep shortcut_ablation 110 5 0
python repro/summarize.py "$EXP" --by shortcut
