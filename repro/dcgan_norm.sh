#!/usr/bin/env bash
# Claims (Xiang & Li 2017): a weight-normalized DCGAN trains stably where the vanilla one collapses or oscillates,
# batch norm's reconstruction error swings, and the reconstruction measure (optimise z for a held-out image with G
# frozen; mean squared error) tracks sample quality. search_spaces/dcgan_norm.yaml: norm (vanilla, batch, weight) x
# RMSProp rate (1e-4, 5e-4, 2e-3), 5 epochs, 3 seeds = 27 trials on MNIST-5k. The report shows the per-epoch
# reconstruction curves of each norm at its best rate beside its samples (compare --best-per norm).
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR (default repro_reports/dcgan_norm).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_dcgan_norm_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/dcgan_norm}
repro_space dcgan_norm
python repro/summarize.py "$EXP" --by norm lr --metrics val_recon_mse test_recon_mse
python -m orchestrator.compare "$EXP" --by norm,lr --best-per norm --curves-of test_recon_mse --images 3 \
  --html "$REPORT_DIR/report.html" --plots "$REPORT_DIR/plots"
