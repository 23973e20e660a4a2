#!/usr/bin/env bash
# Claim (He et al. 2017, Mask R-CNN, table 2c): RoIAlign beats RoIPool in mask AP, most at high IoU thresholds
# (the paper: about +3 mask AP, +5 AP75). Laptop scale: 64-px generated scenes (trainables/scenes.py), small
# ResNet-FPN, 6 epochs of 400 scenes; search_spaces/mask_rcnn_roi.yaml: roi_op align | pool, 3 seeds = 6 trials
# (about 25 min on a quiet 2-core CPU, 2 at a time). Reports box and mask AP (0.50:0.95, 50, 75) on val and test,
# per-head training losses, the paired t-test over seeds and Welch's t-test, and the compare report with pictures.
# COCO on GPUs: EXTRA_SET="dataset=coco data_dir=/path/to/coco backbone=resnet50 ..." (see the YAML's header)
#   SWEEP_ARGS="--gpus-per-trial 1".
# Env: EPOCHS BATCHES SEEDS EXTRA_SET SWEEP_ARGS MLFLOW_TRACKING_URI REPORT_DIR (default repro_reports/mask_rcnn).
source "$(dirname "$0")/_sweep.sh"
EXP="repro_mask_rcnn_roialign_$(date +%Y%m%d_%H%M%S)"
REPORT_DIR=${REPORT_DIR:-repro_reports/mask_rcnn}
repro_space mask_rcnn_roi
METRICS=(test_mask_ap test_mask_ap50 test_mask_ap75 test_box_ap test_box_ap50 test_box_ap75 val_mask_ap val_box_ap
         train_loss_rpn_cls train_loss_rpn_box train_loss_cls train_loss_box train_loss_mask)
python repro/summarize.py "$EXP" --by roi_op --metrics "${METRICS[@]}" --pair-by roi_op
python -m orchestrator.compare "$EXP" --by roi_op --images 4 --html "$REPORT_DIR/report.html" --plots "$REPORT_DIR/plots"
