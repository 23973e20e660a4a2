#!/usr/bin/env bash
# Claim: swapout with stochastic inference (mean softmax of N sampled passes) beats deterministic inference.
# Default budget (MNIST-5k, 2-core CPU, about 20 min when quiet): pre-activation ResNet-20 with swapout
# Linear(1, 0.5), 30 epochs (840 SGD steps), N = 10 samples (the paper: 30), 3 seeds, 2 trials at a time.
# Paired: every epoch scores each trained net both ways (inference=both), so the two inference rules are compared
# on the same weights; the paired table lists the final test error of each net under both rules.
# CIFAR-10 on GPUs (the paper's wide 32-layer swapout nets, 256 epochs, N = 30):
#   DEPTH=32 EPOCHS=256 SAMPLES=30 EXTRA_SET="widen=4 dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/swapout_inference.sh
# Env: DEPTH EPOCHS BATCHES SAMPLES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI (as in preact_vs_original.sh).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_swapout_inference_$(date +%Y%m%d_%H%M%S)"
repro_sweep swapout_inference 20 30 0 inference_samples="${SAMPLES:-10}"
python repro/summarize.py "$EXP" --by inference --metrics train_loss train_error val_error_deterministic \
  val_error_stochastic test_error_deterministic test_error_stochastic \
  --paired test_error_deterministic test_error_stochastic
