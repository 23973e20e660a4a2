#!/usr/bin/env bash
# Claim: constant scaling (lambda = 0.5) and exclusive gating hurt optimization compared to identity shortcuts.
# Default budget (MNIST-5k, 2-core CPU, 5-8 min): ResNet-56 with original units (the paper: ResNet-110), 2 epochs
# of 12 batches (24 SGD steps), 3 shortcuts x 3 seeds, 2 trials at a time.
# CIFAR-10 on GPUs (the paper, ResNet-110: identity 6.61%, scaling 0.5/0.5 12.35%, exclusive gating 8.70%):
#   DEPTH=110 EPOCHS=164 BATCHES=0 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/shortcut_ablation.sh
# Env: DEPTH EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI (as in preact_vs_original.sh).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_shortcut_ablation_$(date +%Y%m%d_%H%M%S)"
repro_sweep shortcut_ablation 56 2 12
python repro/summarize.py "$EXP" --by shortcut
