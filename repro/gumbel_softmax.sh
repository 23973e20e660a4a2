#!/usr/bin/env bash
# Claims (Jang et al. 2016; Maddison et al. 2016): on a categorical VAE (20 latents of 10 classes, binarised MNIST-5k)
# the Gumbel-softmax estimator reaches a better held-out ELBO than the score-function (REINFORCE) estimator at equal
# steps, and annealing the temperature beats a fixed one. search_spaces/gumbel_temperature.yaml: estimator x soft/hard
# x annealed/fixed tau (the score-function rows fold into one: it has no temperature), 30 epochs, 3 seeds = 15 trials.
# The held-out ELBO is always computed with exact categorical samples, so every estimator is scored on one objective.
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_gumbel_softmax_$(date +%Y%m%d_%H%M%S)"
repro_space gumbel_temperature
python repro/summarize.py "$EXP" --by estimator hard anneal --metrics train_elbo val_elbo test_elbo
