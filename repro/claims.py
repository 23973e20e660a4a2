"""The shipped claims of docs/RESULTS.md as data (issue 20). They live here, beside the repro scripts whose budgets
they reuse, because the orchestrator never names a method's keys or metrics; ``orchestrator.claims.get_claim``
imports this module on first use. Each sentence is the claim as docs/RESULTS.md quotes it; the numbers it reports
are not here: a verdict comes from the runs.
"""

from __future__ import annotations

from orchestrator.claims import Budget, Claim, better, register_claim

GPU = ("--gpus-per-trial", "1")

# Mask R-CNN: the laptop budget is search_spaces/mask_rcnn_roi.yaml's own (6 epochs of 400 generated scenes);
# on a GPU the paper's setting needs a local COCO (--set dataset=coco data_dir=... as the YAML's header lists).
register_claim(Claim(
    name="mask_rcnn_roialign",
    paper="He, Gkioxari, Dollár & Girshick 2017, Mask R-CNN, table 2c",
    sentence=("with everything else equal, RoIAlign beats RoIPool in mask AP, most at high IoU thresholds "
              "(\"about 3 points AP, about 5 points AP75\")"),
    space="search_spaces/mask_rcnn_roi.yaml",
    budgets={
        "smoke": Budget({"epochs": 1, "limit_train_batches": 2, "train_scenes": 16, "val_scenes": 8,
                         "test_scenes": 8}),
        "laptop": Budget({}),
        "gpu": Budget({"epochs": 12}, seeds=5, sweep_args=GPU),
    },
    select_metric="val_mask_ap",
    # the same seed gives both arms the same data order and initial backbone: paired by seed, as RESULTS.md reports
    comparison=better("test_mask_ap", "max", a={"roi_op": "align"}, b={"roi_op": "pool"}, by="paired"),
    results_section="1. Mask R-CNN: RoIAlign vs RoIPool",
))

# DenseCap: the laptop budget is search_spaces/densecap_regions.yaml's own (4 epochs of 1,200 scenes).
register_claim(Claim(
    name="densecap_bilinear",
    paper="Johnson, Karpathy & Fei-Fei 2016, DenseCap, arXiv:1511.07571",
    sentence=("the localization layer's bilinear interpolation of region features beats RoIPool-style quantisation "
              "in the dense-captioning mAP"),
    space="search_spaces/densecap_regions.yaml",
    budgets={
        "smoke": Budget({"epochs": 1, "limit_train_batches": 2, "train_images": 32, "val_images": 8,
                         "test_images": 8}),
        "laptop": Budget({}),
        "gpu": Budget({"epochs": 12}, seeds=5, sweep_args=GPU),
    },
    select_metric="val_dense_map",
    comparison=better("test_dense_map", "max", a={"region_features": "bilinear"}, b={"region_features": "roipool"},
                      by="paired"),
    results_section="2. DenseCap: bilinear region features vs RoIPool",
))

# Part I, claim 1: repro/preact_vs_original.sh's budget (ResNet-110, 15 epochs on MNIST-5k); the claim is about
# optimisation, so the compared metric is the training loss of the last epoch, not a test metric.
register_claim(Claim(
    name="preact_vs_original",
    paper="He, Zhang, Ren & Sun 2016, Identity Mappings in Deep Residual Networks, Fig. 1/6",
    sentence="Full pre-activation trains to a lower training loss than the original ordering at depth",
    space="repro/preact_vs_original.yaml",
    budgets={
        "smoke": Budget({"depth": 20, "epochs": 1, "limit_train_batches": 2}),
        "laptop": Budget({"depth": 110, "epochs": 15, "limit_train_batches": 0}),
        "gpu": Budget({"depth": 110, "epochs": 164, "limit_train_batches": 0}, sweep_args=GPU),
    },
    select_metric="val_error",
    # different orderings are different nets: a seed pairs nothing but the data order, so Welch's test
    comparison=better("train_loss", "min", a={"ordering": "full_preact"}, b={"ordering": "original"}, by="welch"),
    results_section="1. Full pre-activation trains to a lower training loss than the original ordering at depth",
))
