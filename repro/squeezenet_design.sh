#!/usr/bin/env bash
# Claims (Iandola et al. 2016, Sec. 5-6): accuracy saturates as the squeeze ratio SR and the share of 3x3 filters
# pct_3x3 grow while the model keeps growing (Fig. 3); simple bypass beats no bypass (Table 3).
# Default budget (MNIST-5k, 2-core CPU): the small-input SqueezeNet, SR {0.125, 0.5} x pct_3x3 {0.25, 0.5} x bypass
# {none, simple}, 3 epochs (Adam 1e-3, linear decay), 3 seeds = 24 trials. The size of each design is in the
# trials' params (MLflow) and in the table (parameters are fixed by the design, so their std is 0).
# ImageNet or CIFAR on GPUs: EPOCHS=60 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" \
#   SWEEP_ARGS="--gpus-per-trial 1" repro/squeezenet_design.sh (widen the grids in search_spaces/squeezenet_design.yaml).
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_squeezenet_design_$(date +%Y%m%d_%H%M%S)"
repro_space squeezenet_design
python repro/summarize.py "$EXP" --by sq_ratio pct_3x3 bypass --metrics train_loss val_error test_error \
  --pair-by bypass
