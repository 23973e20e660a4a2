#!/usr/bin/env bash
# Claims (Eslami et al. 2016): AIR learns to count the digits of multi-MNIST canvases without count labels (the
# paper: about 98% count accuracy on 0 to 2 digits), and what it does on 3-digit canvases it never saw (the paper:
# a plain AIR fails to extrapolate; DAIR does better). Laptop scale: 24x24 canvases of 0 to 2 12-pixel MNIST-5k
# digits, small networks, 8 epochs of 4,000 fresh canvases (1,000 steps); search_spaces/air_prior.yaml: the count
# prior's final success probability (0.01, 1e-4) x its annealing (none, 500 steps), 3 seeds = 12 trials.
# Paper scale (50x50, 28-pixel digits, 100k+ steps) on a GPU: EXTRA_SET="canvas_size=50 digit_size=28
#   glimpse_size=20 lstm_size=256 hidden_size=200 z_what_dim=50 likelihood_std=0.3 epochs=200 anneal_steps=100000"
#   SWEEP_ARGS="--gpus-per-trial 1" (the trainable's defaults are that scale, except the budget).
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR (default repro_reports/air).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_air_counting_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/air}
repro_space air_prior
python repro/summarize.py "$EXP" --by prior_end anneal_steps \
  --metrics val_count_accuracy test_count_accuracy test3_count_accuracy test_elbo
python -m orchestrator.compare "$EXP" --by prior_end,anneal_steps --images 4 --html "$REPORT_DIR/report.html" \
  --plots "$REPORT_DIR/plots"
