#!/usr/bin/env bash
# Claim (Han et al. 2016; Iandola et al. 2016, Table 2): pruning, trained quantisation and Huffman coding shrink a
# net by a large factor at a small loss of accuracy (SqueezeNet on ImageNet: 33% density, 6 bits, 510x smaller than
# AlexNet and no loss of top-1).
# Default budget (MNIST-5k, 2-core CPU): SqueezeNet trained 4 epochs per trial, pruned to sparsity {0.67, 0.9} and
# retrained 1 epoch, quantised to {4, 6, 8} bits per conv layer and fine-tuned 1 epoch, Huffman-coded; 3 seeds =
# 18 trials. Every stage's size and error are in each trial's metrics (dense_*, pruned_*, quantised_*, huffman_*).
# One epoch at 0.1x does not recover a net pruned in one shot (docs/RESULTS.md Part V 2b, Round A); three at the base
# rate do (Round B: 33% density, 6 bits, 11x smaller at the dense error):
#   EXTRA_SET="sparsity=0.67 bits_conv=6 retrain_epochs=3 retrain_lr_scale=1.0" repro/deep_compression.sh
# Larger: EXTRA_SET="base_epochs=30 source_config={dataset: cifar10} data_dir=$HOME/data" repro/deep_compression.sh
# Env: SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
EXP="repro_deep_compression_$(date +%Y%m%d_%H%M%S)"
repro_space deep_compression
python repro/summarize.py "$EXP" --by sparsity bits_conv --metrics dense_val_error dense_test_error \
  pruned_test_error quantised_test_error huffman_test_error val_error_increase huffman_compression_ratio \
  huffman_compressed_bytes
