#!/usr/bin/env bash
# Claim: full pre-activation trains to a lower training loss than the original ordering at depth 110.
# Default budget (MNIST-5k, 2-core CPU, about 35 min when quiet): ResNet-110, 15 epochs of 28 batches of 128 (420
# SGD steps, lr / 10 after epochs 7 and 11), 2 orderings x 3 seeds, 2 trials at a time. Far from the paper's 64k steps.
# CIFAR-10 on GPUs (the paper: 164 epochs; ResNet-110 6.37% pre-activation vs 6.61% original):
#   EPOCHS=164 BATCHES=0 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/preact_vs_original.sh
# Env: DEPTH EPOCHS BATCHES SEEDS EXTRA_SET (more key=value) SWEEP_ARGS (more sweep flags) MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_preact_vs_original_$(date +%Y%m%d_%H%M%S)"
repro_sweep preact_vs_original 110 15 0
python repro/summarize.py "$EXP" --by ordering
