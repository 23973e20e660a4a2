#!/usr/bin/env bash
# Claim (Johnson et al. 2016, DenseCap, sec. 4 / table 1): bilinear interpolation of region features beats
# RoIPool-style quantisation in the dense-captioning mAP (the paper's full model, with bilinear sampling: 5.39 mAP
# on Visual Genome, METEOR thresholds). Laptop scale: 64x64 generated scenes of 1 to 3 shapes whose regions carry
# templated object and relation captions, 4 epochs of 1,200 scenes; search_spaces/densecap_regions.yaml:
# region_features (bilinear, roipool) x 3 seeds = 6 trials. Then a Welch t-test of val_dense_map between the two.
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
  val_caption_accuracy_beam val_size_accuracy val_colour_accuracy val_shape_accuracy test_dense_map
python - "$EXP" <<'PY'  # Welch's t-test of the claim's metric and its parts, bilinear vs roipool
import os
import sys

from scipy import stats
from repro.summarize import finished_trials
runs = finished_trials(sys.argv[1], os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
for metric in ("val_dense_map", "test_dense_map", "val_det_map", "val_dense_map_strict"):
    a = runs[runs["params.region_features"] == "bilinear"][f"metrics.{metric}"].dropna()
    b = runs[runs["params.region_features"] == "roipool"][f"metrics.{metric}"].dropna()
    t = stats.ttest_ind(a, b, equal_var=False)
    print(f"{metric}: bilinear {a.mean():.3f} ± {a.std():.3f} (n={len(a)}) vs roipool {b.mean():.3f} ± "
          f"{b.std():.3f} (n={len(b)}); Welch t = {t.statistic:.2f}, p = {t.pvalue:.4f}")
PY
python -m orchestrator.compare "$EXP" --by region_features --images 2 --html "$REPORT_DIR/report.html" \
  --plots "$REPORT_DIR/plots"
