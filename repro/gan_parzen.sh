#!/usr/bin/env bash
# The GAN of Goodfellow et al. (2014) on MNIST-5k and its Parzen-window log-likelihood, against the paper's table
# (MNIST: 225 ± 2 nats for the adversarial net; deep belief net 138, stacked CAE 121, deep GSN 214). Caveat, the
# paper's own: Parzen estimates have high variance and do not perform well in high dimensions; ours also uses 1,000
# samples instead of 10,000 and 3,500 training images instead of 60,000, so only the ranking over k means anything.
# search_spaces/gan_k_steps.yaml with the rate pinned at the trainable's default (1e-3): k = 1, 2, 5 discriminator
# steps per generator step, 20 passes over the data, 3 seeds = 9 trials. The whole k x lr grid (27 trials):
# LR_GRID=1 repro/gan_parzen.sh.
# Env: LR_GRID EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_gan_parzen_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/gan_parzen}
if [[ -n ${LR_GRID:-} ]]; then repro_space gan_k_steps; else repro_space gan_k_steps lr=0.001; fi
python repro/summarize.py "$EXP" --by k_steps lr --metrics val_parzen_ll test_parzen_ll val_d_accuracy
python -m orchestrator.compare "$EXP" --by k_steps,lr --images 3 --html "$REPORT_DIR/report.html" \
  --plots "$REPORT_DIR/plots"
