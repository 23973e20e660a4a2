#!/usr/bin/env bash
# Claim (Graham 2014, Sec. 4): averaging the predictions of N passes with different pooling sequences lowers the
# test error, most of the gain in the first few passes.
# Default budget (MNIST-5k, 2-core CPU): fmp_net (6 C2-FMP(sqrt 2) layers, 16n filters, random overlapping FMP),
# 3 epochs, 3 seeds. Paired: each trained net is scored with N = 1 (fixed sequences) and N = 2, 3, 4, 6, 8, 12
# averaged passes on the same weights; the table is the mean and std over seeds at each N, the plot every seed's
# curve (docs/figures/fmp_test_passes.png, or PLOT=path).
# Paper scale (MNIST: 32n filters, input padded to 36, dropout; CIFAR-10 on GPUs):
#   EPOCHS=100 EXTRA_SET="fmp_filters_step=32 fmp_pad_to=36 dropout_max=0.5" repro/fmp_test_passes.sh
#   EPOCHS=100 EXTRA_SET="dataset=cifar10 data_dir=$HOME/data/cifar-10-batches-py" SWEEP_ARGS="--gpus-per-trial 1" \
#   repro/fmp_test_passes.sh
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS PLOT MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_fmp_test_passes_$(date +%Y%m%d_%H%M%S)"
repro_space fmp_test_passes
N=(2 3 4 6 8 12)
python repro/summarize.py "$EXP" --by fmp_kind fmp_overlap \
  --metrics test_error "${N[@]/#/test_error_avg}" --curve 1 "${N[@]}" --curve-label "averaged test passes N" \
  --plot "${PLOT:-docs/figures/fmp_test_passes.png}" --paired test_error test_error_avg12
