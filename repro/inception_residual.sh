#!/usr/bin/env bash
# Claims (Szegedy et al. 2016, Sec. 3.3 and Fig. 24-25): Inception-ResNet-v2 reaches a given accuracy in fewer
# steps than the plain Inception-v4; scaling the residual branch (s = 0.1 to 0.3 in ReLU(x + s F(x))) keeps wide
# residual nets from "dying", where unscaled ones (s = 1) can.
# Default budget (MNIST-5k, 2-core CPU): the small-input variants at width 0.125 (the trainable's default, 170k parameters),
# 3 epochs, 3 seeds: Inception-ResNet-v2 at s in {0.1, 0.2, 0.3, 1.0} (12 trials), then Inception-v4 (3 trials), into
# one experiment. Learning curves over seeds: python -m orchestrator.compare "$EXP" --by arch,residual_scale --plots DIR
# Paper scale: EXTRA_SET="width=1.0 blocks=[5,10,5] dataset=cifar10 data_dir=$HOME/data" EPOCHS=60 \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/inception_residual.sh
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_inception_residual_$(date +%Y%m%d_%H%M%S)"
repro_space inception_residual_scale
repro_space inception_residual_scale arch=inception_v4 residual_scale=1.0
python repro/summarize.py "$EXP" --by arch residual_scale --metrics train_loss train_error val_error test_error
