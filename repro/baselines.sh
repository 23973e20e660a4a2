#!/usr/bin/env bash
# The CS231n baselines every other result is read against (issue 15, part 2): kNN, the linear classifier with the
# SVM and the softmax loss, the two-layer MLP, small AlexNet-, VGG- and GoogLeNet-style nets and ResNet-20, on
# MNIST-5k, 3 seeds each (kNN, which has no seed to vary: 3 train/val splits). Budgets are in
# search_spaces/baselines_*.yaml (kNN trains nothing: one round of distances; linear and MLP 10 epochs; the convnets
# and ResNet-20 8 epochs). kNN's k: search_spaces/knn_k.yaml.
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI (EPOCHS also overrides kNN's single round, which
# only repeats the same evaluation).
# One MLflow experiment per baseline, ${PREFIX}_<name> (the linear classifier's two losses are two rows of one);
# each summarize call gives one baseline's rows: mean and std over seeds of the errors and the parameter count.
source "$(dirname "$0")/_sweep.sh"
PREFIX="repro_baselines_$(date +%Y%m%d_%H%M%S)"
BASELINES=(knn linear mlp alexnet vgg googlenet resnet20)
for name in "${BASELINES[@]}"; do
  EXP="${PREFIX}_$name"
  if [[ $name == knn ]]; then
    SEEDS=1 repro_space baselines_knn  # deterministic: its three repeats are three splits (split_seed in the file)
  else
    repro_space "baselines_$name"
  fi
done
for name in "${BASELINES[@]}"; do
  by=dataset  # a key every baseline has: one row per experiment; the linear classifier has two (svm, softmax)
  [[ $name == linear ]] && by=loss
  python repro/summarize.py "${PREFIX}_$name" --by "$by" --metrics val_error test_error params
done
