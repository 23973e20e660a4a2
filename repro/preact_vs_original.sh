#!/usr/bin/env bash
# Claim: full pre-activation trains to a lower training loss than the original ordering at depth 110.
# Default budget (MNIST-5k, 2-core CPU, 5-8 min): ResNet-110, 2 epochs of 12 batches of 128 (24 SGD steps), 2
# orderings x 3 seeds, 2 trials at a time. 24 steps are far from the paper's 64k: this compares early training.
# CIFAR-10 on GPUs (the paper: 164 epochs; ResNet-110 6.37% pre-activation vs 6.61% original):
#   EPOCHS=164 BATCHES=0 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/preact_vs_original.sh
# Env: DEPTH EPOCHS BATCHES SEEDS EXTRA_SET (more key=value) SWEEP_ARGS (more sweep flags) MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_preact_vs_original_$(date +%Y%m%d_%H%M%S)"
repro_sweep preact_vs_original 110 2 12
python repro/summarize.py "$EXP" --by ordering
