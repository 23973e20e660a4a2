#!/usr/bin/env bash
# Claim (Salimans & Kingma 2016, Sec. 5.1): weight normalization plus mean-only batch norm gives the lowest test error
# of the five normalizations (CIFAR-10: 7.31% vs 8.05% batch norm, 8.46% weight norm alone); weight norm learns about
# as fast as batch norm without its per-batch statistics.
# Default budget (MNIST-5k, 2-core CPU): ResNet-20 with norm none / batch / weight / mean_only_batch /
# weight+mean_only_batch, Adam at lr 0.003 for all five (the paper's; the resnet trainable's SGD at 0.1 diverges
# without batch norm), 3 epochs, 3 seeds = 15 trials (search_spaces/normalization.yaml, with the rates tried). On this
# residual net `none` and `weight` barely learn at any Adam rate tried (2-epoch probes in the yaml): expect them near
# chance. The per-step cost of each norm is bench/norm_step.py's table.
# CIFAR-10 on GPUs (the paper: 200 epochs of Adam at 0.003): EPOCHS=200 EXTRA_SET="dataset=cifar10
#   data_dir=$HOME/data/cifar-10-batches-py" SWEEP_ARGS="--gpus-per-trial 1" repro/normalization.sh
# The same five on a plain convnet like the paper's (search_spaces/normalization_plain.yaml: the small VGG-11-style
# net, no shortcuts), 15 more trials.
# Env: PARTS (default "residual plain"; either alone) EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI.
source "$(dirname "$0")/_sweep.sh"
STAMP=$(date +%Y%m%d_%H%M%S)
for part in ${PARTS:-residual plain}; do
  case $part in
    residual) EXP="repro_normalization_$STAMP"; repro_space normalization ;;
    plain) EXP="repro_normalization_plain_$STAMP"; repro_space normalization_plain ;;
    *) echo "error: PARTS: unknown part '$part' (residual, plain)" >&2; exit 2 ;;
  esac
  python repro/summarize.py "$EXP" --by norm --metrics params train_loss val_error test_error
done
