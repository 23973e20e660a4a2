#!/usr/bin/env bash
# Claim: stochastic depth with linear decay beats the uniform schedule at equal p_L (0.5), and beats no SD on a deep
# net. Two sweeps into one MLflow experiment: {linear, uniform} at p_L = 0.5, then the p_L = 1 baseline.
# Default budget (Round D of docs/RESULTS.md, MNIST-5k, 2-core CPU): ResNet-110 (as the paper, original
# ordering), 5 epochs at batch 32 (625 SGD steps; the yaml scales the paper's rates to the batch: 400 warm-up steps
# at 0.0025, then 0.025, /10 after epoch 4), 3 configs x 3 seeds, 2 trials at a time. Measured: 1 h 43 min beside
# four development sessions (load 3 to 8). At batch 128 the same 400-step warm-up needs 24 epochs and about 4 hours
# here (114 to 131 s an epoch with two trials on the 2 cores). Stochastic depth regularises; its gains in the paper
# come after hundreds of epochs, so this budget tests the claim only at small scale.
# The paper's batch and rates: EXTRA_SET="batch_size=128 lr=0.1 warmup_lr=0.01 lr_milestones=[0.5,0.75]".
# CIFAR-10 on GPUs (the paper: 500 epochs; ResNet-110 6.41% -> 5.25% with linear p_L = 0.5; 1202 layers 4.91%):
#   EPOCHS=500 BATCHES=0 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/sd_schedules.sh     # DEPTH=1202: the 1202-layer net
# Env: DEPTH EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI (as in preact_vs_original.sh).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_sd_schedules_$(date +%Y%m%d_%H%M%S)"
repro_sweep sd_schedules 110 5 0
repro_sweep sd_schedules 110 5 0 p_L=1.0 sd_schedule=linear  # the no-SD baseline
python repro/summarize.py "$EXP" --by p_L sd_schedule
