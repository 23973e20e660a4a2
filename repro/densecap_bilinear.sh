#!/usr/bin/env bash
# Claim (Johnson et al. 2016, DenseCap, sec. 4 / table 1): bilinear interpolation of region features beats
# RoIPool-style quantisation in the dense-captioning mAP (the paper's full model, with bilinear sampling: 5.39 mAP
# on Visual Genome, METEOR thresholds). Laptop scale: 64x64 generated scenes of 1 to 3 shapes whose regions carry
# templated object and relation captions, 4 epochs of 1,200 scenes; search_spaces/densecap_regions.yaml:
# region_features (bilinear, roipool) x 3 seeds = 6 trials. Then paired and Welch t-tests of each metric between the two.
# Visual Genome (local copy; nothing is downloaded): EXTRA_SET="dataset=visual_genome data_dir=/path/to/vg
#   image_size=256 stride=16 anchor_sizes=[32,64,128,256] min_word_count=15 max_words=10"
#   SWEEP_ARGS="--gpus-per-trial 1"
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR (default repro_reports/densecap).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_densecap_bilinear_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/densecap}
repro_space densecap_regions
python repro/summarize.py "$EXP" --by region_features \
  --metrics val_dense_map val_dense_map_beam val_dense_map_strict val_det_map val_caption_accuracy \
  val_caption_accuracy_beam val_size_accuracy val_colour_accuracy val_shape_accuracy test_dense_map \
  --pair-by region_features   # paired (by seed) and Welch t-tests, roipool vs bilinear
python -m orchestrator.compare "$EXP" --by region_features --images 2 --html "$REPORT_DIR/report.html" \
  --plots "$REPORT_DIR/plots"
