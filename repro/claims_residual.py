"""Part I of docs/RESULTS.md: the residual family on MNIST-5k (issue 3), as claims.

``laptop`` is each repro script's default budget (``repro_sweep NAME DEPTH EPOCHS BATCHES`` in ``repro/*.sh``);
``gpu`` is the paper-scale run each script's header names, without its dataset: CIFAR-10 is read from a local folder
(``dataset=cifar10 data_dir=...``) that a preset cannot know, so add it on the command line, as the scripts do with
EXTRA_SET. ``smoke`` trains depth-8 nets for 2 batches: every arm, every seed and every compared metric, in seconds.
"""

from __future__ import annotations

from orchestrator.claims import Budget, Claim, better, register_claim
from repro.claims_common import GPU, pin

# One epoch of 2 batches of the smallest net of each family (6n + 2 layers, n = 1): the pipeline, not the claim.
SMOKE_RESIDUAL = {"depth": 8, "epochs": 1, "limit_train_batches": 2}

# Claim 1: repro/preact_vs_original.sh's budget (ResNet-110, 15 epochs on MNIST-5k); the claim is about
# optimisation, so the compared metric is the training loss of the last epoch, not a test metric.
register_claim(Claim(
    name="preact_vs_original",
    paper="He, Zhang, Ren & Sun 2016, Identity Mappings in Deep Residual Networks, Fig. 1/6",
    sentence="Full pre-activation trains to a lower training loss than the original ordering at depth",
    space="repro/preact_vs_original.yaml",
    budgets={
        "smoke": Budget(SMOKE_RESIDUAL),
        "laptop": Budget({"depth": 110, "epochs": 15, "limit_train_batches": 0}),
        "gpu": Budget({"depth": 110, "epochs": 164, "limit_train_batches": 0}, sweep_args=GPU),
    },
    select_metric="val_error",
    # different orderings are different nets: a seed pairs nothing but the data order, so Welch's test
    comparison=better("train_loss", "min", a={"ordering": "full_preact"}, b={"ordering": "original"}, by="welch"),
    results_section="Part I, 1. Full pre-activation trains to a lower training loss than the original ordering at "
                    "depth",
))

# Claim 2 is one sentence about two shortcuts; a comparison has two arms, so it is two claims on the same sweep
# (repro/shortcut_ablation.sh: ResNet-110 with original units, 5 epochs at batch 32 with the step warm-up), each
# identity against one of them, as Round D of RESULTS.md tests them (Welch's t-test on the final training loss).
SHORTCUT_BUDGETS = {
    "smoke": Budget(SMOKE_RESIDUAL),
    "laptop": Budget({"depth": 110, "epochs": 5, "limit_train_batches": 0}),
    "gpu": Budget({"depth": 110, "epochs": 164, "limit_train_batches": 0}, sweep_args=GPU),
}
for shortcut, what in (("scaling", "constant scaling (lambda = 0.5 on shortcut and branch)"),
                       ("gating", "exclusive gating (b_g = -6)")):
    register_claim(Claim(
        name=f"shortcut_{shortcut}_vs_identity",
        paper="He, Zhang, Ren & Sun 2016, Identity Mappings in Deep Residual Networks, Table 1",
        sentence=f"Constant scaling (lambda = 0.5) and exclusive gating hurt optimization compared to identity "
                 f"shortcuts: here {what} against identity",
        space="repro/shortcut_ablation.yaml",
        budgets=SHORTCUT_BUDGETS,
        select_metric="val_error",
        # the shortcut changes the net (and gating adds parameters): Welch, as for the orderings
        comparison=better("train_loss", "min", a={"shortcut": "identity"}, b={"shortcut": shortcut}, by="welch"),
        results_section="Part I, 2. Constant scaling (lambda = 0.5) and exclusive gating hurt optimization compared "
                        "to identity shortcuts",
    ))

# Claim 3, two halves. repro/sd_schedules.sh runs the space ({linear, uniform} at p_L = 0.5) and then the same space
# pinned to p_L = 1 (the no-SD net, the same under either schedule): the second half needs both commands, the first
# half only the first. RESULTS.md compares the final test error (Round D, Welch); the sweep selects on val_error.
# The paper's batch and rates for the GPU run are the script's own comment (its yaml scales them to batch 32).
SD_BUDGETS = {
    "smoke": Budget(SMOKE_RESIDUAL),
    "laptop": Budget({"depth": 110, "epochs": 5, "limit_train_batches": 0}),
    "gpu": Budget({"depth": 110, "epochs": 500, "limit_train_batches": 0, "batch_size": 128, "lr": 0.1,
                   "warmup_lr": 0.01, "lr_milestones": [0.5, 0.75]}, sweep_args=GPU),
}
SD_SECTION = "Part I, 3. Stochastic depth: linear decay beats uniform at equal p_L, and beats no SD on a deep net"
register_claim(Claim(
    name="sd_linear_vs_uniform",
    paper="Huang, Sun, Liu, Sedra & Weinberger 2016, Deep Networks with Stochastic Depth, Fig. 8",
    sentence="Stochastic depth: linear decay beats uniform at equal p_L",
    space="repro/sd_schedules.yaml",
    budgets=SD_BUDGETS,
    select_metric="val_error",
    comparison=better("test_error", "min", a={"p_L": 0.5, "sd_schedule": "linear"},
                      b={"p_L": 0.5, "sd_schedule": "uniform"}, by="welch"),
    results_section=SD_SECTION,
))
register_claim(Claim(
    name="sd_linear_vs_no_sd",
    paper="Huang, Sun, Liu, Sedra & Weinberger 2016, Deep Networks with Stochastic Depth, Table 1",
    sentence="Stochastic depth (linear decay, p_L = 0.5) beats no SD on a deep net",
    space="repro/sd_schedules.yaml",
    budgets=SD_BUDGETS,
    select_metric="val_error",
    comparison=better("test_error", "min", a={"p_L": 0.5, "sd_schedule": "linear"}, b={"p_L": 1.0}, by="welch"),
    results_section=SD_SECTION,
    variants=((), pin(p_L=1.0, sd_schedule="linear")),
))

# Claim 4: repro/swapout_inference.sh (pre-activation ResNet-20, swapout Linear(1, 0.5), 30 epochs, N = 10 samples).
# inference=both scores every net both ways on the same weights: one run gives both arms, a paired test by seed.
register_claim(Claim(
    name="swapout_stochastic_inference",
    paper="Singh, Hoiem & Forsyth 2016, Swapout: Learning an ensemble of deep architectures, Sec. 4",
    sentence="Swapout with stochastic inference beats deterministic inference",
    space="repro/swapout_inference.yaml",
    budgets={
        "smoke": Budget({**SMOKE_RESIDUAL, "inference_samples": 2}),
        "laptop": Budget({"depth": 20, "epochs": 30, "limit_train_batches": 0, "inference_samples": 10}),
        "gpu": Budget({"depth": 32, "epochs": 256, "limit_train_batches": 0, "inference_samples": 30, "widen": 4.0},
                      sweep_args=GPU),
    },
    select_metric="val_error",
    comparison=better("test_error_stochastic", "min", a={}, b={}, b_metric="test_error_deterministic",
                      by="paired"),
    results_section="Part I, 4. Swapout with stochastic inference beats deterministic inference",
))
