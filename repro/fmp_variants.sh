#!/usr/bin/env bash
# Claims (Graham 2014, Sec. 3-4): overlapping pooling regions beat disjoint ones; random sequences beat
# pseudorandom ones without dropout, and pseudorandom ones win when the net is regularised (dropout).
# Default budget (MNIST-5k, 2-core CPU): fmp_net, {random, pseudorandom} x {disjoint, overlapping} x alpha
# {sqrt 2, 1.6}, 3 epochs, 3 seeds, run twice into one experiment: dropout off, then dropout_max = 0.5 (the
# regularised half). Scored with fixed sequences (N = 1) and N = 4 averaged passes.
# Paper scale: EPOCHS=100 EXTRA_SET="fmp_filters_step=32 fmp_pad_to=36" repro/fmp_variants.sh (MNIST), or
#   EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" SWEEP_ARGS="--gpus-per-trial 1" for CIFAR-10.
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_fmp_variants_$(date +%Y%m%d_%H%M%S)"
repro_space fmp_variants dropout_max=0.0
repro_space fmp_variants dropout_max=0.5
python repro/summarize.py "$EXP" --by dropout_max fmp_overlap fmp_kind fmp_alpha \
  --metrics train_loss val_error test_error test_error_avg4 --pair-by fmp_overlap
python repro/summarize.py "$EXP" --by dropout_max fmp_kind fmp_overlap fmp_alpha \
  --metrics val_error test_error test_error_avg4 --pair-by fmp_kind --within dropout_max
