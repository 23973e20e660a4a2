#!/usr/bin/env bash
# Claims (Park et al. 2021, Nerfies): (1) with a deformation field, novel views of a deforming scene are better than
# a plain NeRF's; (2) annealing the warp's positional encoding coarse to fine beats all frequencies from the start;
# (3) the elastic regulariser helps. Laptop scale: the synthetic deforming scene (12 frames of 32x32, held-out views
# of the same times from other poses), small MLPs (width 64, depth 4; warp width 64, depth 4, 6 frequencies),
# 24 + 24 samples per ray, 192 rays per step drawn across frames, 4 x 200 = 800 Adam steps (lr 2e-3, cosine),
# c2f over 400 steps. Two sweeps into one MLflow experiment: search_spaces/nerfies_ablation.yaml with the elastic
# weight pinned (plain NeRF, full, no c2f), then the full model without the elastic loss; 3 seeds each = 12 trials.
# Measured: 2026-12-04 14:01 to 14:49 UTC on the shared 2-core CPU (docs/RESULTS.md Part VIII.3).
# Paper scale (a real capture in the Nerfies format, 8 warp frequencies, 250k steps) on a GPU:
#   EXTRA_SET="dataset=nerfies data_dir=/path/to/capture image_scale=4 pos_freqs=10 warp_freqs=8 width=256 depth=8
#   warp_width=128 warp_depth=6 steps_per_epoch=5000 epochs=50" SWEEP_ARGS="--gpus-per-trial 1".
# Env: EPOCHS SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR (default repro_reports/nerfies).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_nerfies_ablation_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/nerfies}
repro_space nerfies_ablation elastic_weight=0.001  # plain NeRF, full, no c2f
repro_space nerfies_ablation warp=se3 warp_anneal_steps=400 elastic_weight=0.0  # no elastic
python repro/summarize.py "$EXP" --by warp warp_anneal_steps elastic_weight \
  --metrics val_psnr test_psnr val_ssim test_ssim train_psnr
python -m orchestrator.compare "$EXP" --by warp,warp_anneal_steps,elastic_weight --images 4 \
  --html "$REPORT_DIR/report.html" --plots "$REPORT_DIR/plots"
