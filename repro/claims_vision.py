"""Parts V and VI of docs/RESULTS.md (issues 14 and 15): FMP, SqueezeNet, Inception; normalization and the CS231n
notes' optimizers, as claims.

``laptop`` is the space file's own budget (``repro_space NAME`` in the scripts: no overrides); ``gpu`` is the scale
each script's header names, without the local dataset folder a preset cannot know (add ``dataset=cifar10
data_dir=...`` on the command line, as the scripts' EXTRA_SET does); ``smoke`` is 1 epoch of 2 batches, with a
swept key pinned where the claim does not compare it, so that a smoke run stays a few dozen trials.
"""

from __future__ import annotations

from orchestrator.claims import Budget, Claim, better, register_claim
from repro.claims_common import GPU, pin

SMOKE = {"epochs": 1, "limit_train_batches": 2}

# ---- Part V, 1a: the same trained net scored with one fixed pooling sequence (test_error) and the mean of 12
# passes (test_error_avg12): the same weights, so a paired test within each run.
register_claim(Claim(
    name="fmp_test_passes",
    paper="Graham 2014, Fractional Max-Pooling, Sec. 4",
    sentence="Averaging N test passes lowers the error, most of the gain in the first few",
    space="search_spaces/fmp_test_passes.yaml",
    budgets={
        "smoke": Budget(SMOKE),
        "laptop": Budget({}),
        "gpu": Budget({"epochs": 100, "fmp_filters_step": 32, "fmp_pad_to": 36, "dropout_max": 0.5},
                      sweep_args=GPU),
    },
    select_metric="val_error",
    comparison=better("test_error_avg12", "min", a={}, b={}, b_metric="test_error", by="paired"),
    results_section="Part V, 1a. Averaging N test passes lowers the error, most of the gain in the first few",
))

# ---- Part V, 1b: repro/fmp_variants.sh runs the space twice, without dropout and with dropout_max = 0.5.
# RESULTS.md pairs overlapping with disjoint over matched trials (same seed, kind, alpha and dropout); a claim pairs
# by one param only, so these compare the pooled arms with Welch's test (less power, no false pairing).
FMP_VARIANTS = (pin(dropout_max=0.0), pin(dropout_max=0.5))
FMP_BUDGETS = {
    "smoke": Budget({**SMOKE, "fmp_alpha": 1.414}),  # one alpha: 4 configs x 2 dropouts x 3 seeds
    "laptop": Budget({}),
    "gpu": Budget({"epochs": 100, "fmp_filters_step": 32, "fmp_pad_to": 36}, sweep_args=GPU),
}
FMP_SECTION = "Part V, 1b. Overlapping vs disjoint regions; random vs pseudorandom sequences, without and with dropout"
FMP_PAPER = "Graham 2014, Fractional Max-Pooling, Sec. 3-4"
register_claim(Claim(
    name="fmp_overlapping_vs_disjoint",
    paper=FMP_PAPER,
    sentence="overlapping pooling regions beat disjoint ones",
    space="search_spaces/fmp_variants.yaml",
    budgets=FMP_BUDGETS,
    select_metric="val_error",
    comparison=better("test_error", "min", a={"fmp_overlap": "overlapping"}, b={"fmp_overlap": "disjoint"}),
    results_section=FMP_SECTION,
    variants=FMP_VARIANTS,
))
for kind, other, dropout, when in (("random", "pseudorandom", 0.0, "without dropout"),
                                   ("pseudorandom", "random", 0.5, "when the net is regularised by dropout")):
    register_claim(Claim(
        name=f"fmp_{kind}_sequences_{'no_dropout' if dropout == 0.0 else 'dropout'}",
        paper=FMP_PAPER,
        sentence=f"{kind} pooling sequences beat {other} ones {when}",
        space="search_spaces/fmp_variants.yaml",
        budgets=FMP_BUDGETS,
        select_metric="val_error",
        comparison=better("test_error", "min", a={"fmp_kind": kind, "dropout_max": dropout},
                          b={"fmp_kind": other, "dropout_max": dropout}),
        results_section=FMP_SECTION,
        variants=FMP_VARIANTS,
    ))

# ---- Part V, 2a: simple bypass against none, pooled over the designs (Welch: a bypass changes the net). The
# other claim of 2a, accuracy saturating as SR and pct_3x3 grow, is a shape (rise, then flat), neither a
# comparison of two arms nor a monotone trend: not registered.
register_claim(Claim(
    name="squeezenet_simple_bypass",
    paper="Iandola et al. 2016, SqueezeNet, Table 3",
    sentence="simple bypass beats no bypass",
    space="search_spaces/squeezenet_design.yaml",
    budgets={
        "smoke": Budget({**SMOKE, "sq_ratio": 0.125, "pct_3x3": 0.25}),
        "laptop": Budget({}),
        "gpu": Budget({"epochs": 60}, sweep_args=GPU),
    },
    select_metric="val_error",
    comparison=better("test_error", "min", a={"bypass": "simple"}, b={"bypass": "none"}),
    results_section="Part V, 2a. The design space: squeeze ratio SR, share of 3x3 filters pct_3x3, bypass",
))
# Part V, 2b (Deep Compression) is NOT registered: its claim is "much smaller at no loss of accuracy", a
# non-inferiority claim (the compressed error is not worse than the dense one by more than a margin); better()
# tests only that one arm is better, so a faithful check needs a non-inferiority comparison with a margin.

# ---- Part V, 3: repro/inception_residual.sh runs the residual-scale space, then the same space pinned to the plain
# Inception-v4. "Trains faster" is read as the training loss after the same steps (RESULTS.md's Welch test).
INCEPTION_BUDGETS = {
    "smoke": Budget(SMOKE),
    "laptop": Budget({}),
    "gpu": Budget({"width": 1.0, "blocks": [5, 10, 5], "epochs": 60}, sweep_args=GPU),
}
INCEPTION_SECTION = "Part V, 3. Inception-v4 and Inception-ResNet-v2 (Szegedy et al. 2016)"
register_claim(Claim(
    name="inception_residual_trains_faster",
    paper="Szegedy, Ioffe, Vanhoucke & Alemi 2016, Inception-v4, Inception-ResNet, Sec. 3.3",
    sentence="The residual version reaches a given accuracy in fewer steps",
    space="search_spaces/inception_residual_scale.yaml",
    budgets=INCEPTION_BUDGETS,
    select_metric="val_error",
    comparison=better("train_loss", "min", a={"arch": "inception_resnet_v2", "residual_scale": 0.1},
                      b={"arch": "inception_v4"}),
    results_section=INCEPTION_SECTION,
    variants=((), pin(arch="inception_v4", residual_scale=1.0)),
))
register_claim(Claim(
    name="inception_residual_scaling",
    paper="Szegedy, Ioffe, Vanhoucke & Alemi 2016, Inception-v4, Inception-ResNet, Sec. 3.3, Figs. 24-25",
    sentence="Scaling the residuals (s = 0.1) keeps the net from \"dying\", where the unscaled one (s = 1) can",
    space="search_spaces/inception_residual_scale.yaml",
    budgets=INCEPTION_BUDGETS,
    select_metric="val_error",
    comparison=better("train_loss", "min", a={"arch": "inception_resnet_v2", "residual_scale": 0.1},
                      b={"arch": "inception_resnet_v2", "residual_scale": 1.0}),
    results_section=INCEPTION_SECTION,
))

# ---- Part VI, 1 and 1b: weight norm + mean-only batch norm against batch norm, the paper's headline pair, on
# ResNet-20 and on the plain VGG-style net. Weight norm reparametrises (and initialises from data): different nets,
# so Welch (RESULTS.md also gives paired p-values).
NORM_SENTENCE = "Weight norm + mean-only batch norm gives the lowest test error of the five (here: against batch norm)"
NORM_PAPER = "Salimans & Kingma 2016, Weight Normalization, Sec. 5.1"
for name, space, smoke, section in (
        ("weightnorm_meanbn_resnet", "search_spaces/normalization.yaml", {**SMOKE, "depth": 8},
         "Part VI, 1. Weight norm + mean-only batch norm gives the lowest test error of the five (Salimans & Kingma "
         "2016)"),
        ("weightnorm_meanbn_plain", "search_spaces/normalization_plain.yaml", SMOKE,
         "Part VI, 1b. The same five on a plain convnet, like the paper's")):
    register_claim(Claim(
        name=name,
        paper=NORM_PAPER,
        sentence=NORM_SENTENCE,
        space=space,
        budgets={"smoke": Budget(smoke), "laptop": Budget({}), "gpu": Budget({"epochs": 200}, sweep_args=GPU)},
        select_metric="val_error",
        comparison=better("test_error", "min", a={"norm": "weight+mean_only_batch"}, b={"norm": "batch"}),
        results_section=section,
    ))
# Part VI, 2 (per-step cost) is a benchmark (bench/norm_step.py). Part VI, 3 (FGSM) is NOT registered: its metrics
# (fgsm_test_accuracy_eps*) are written by `python -m orchestrator.inspect RUN --fgsm ...` after the sweep, on each
# trial's checkpoint (repro/fgsm.sh), and a claim's runs are its commands only; it needs a step after the sweep, or
# the trainable scoring FGSM itself. Parts VI, 4 (kNN) and 5 (baselines) are readings with no claim's verdict.

# ---- Part VI, 6: repro/optimizers.sh tunes each rule's rate on one seed, then runs each rule at its rate with 3
# seeds. A claim runs that second stage: one command per rule, pinned to the rate the tuning stage picked
# (RESULTS.md's table; a new tuning run may pick others). Each rule trains the same MLP from the same seed's
# initialisation on the same batches, so the seed pairs them (RESULTS.md's paired t-tests); "converges better"
# is the training loss after the same 5 epochs.
OPTIMIZER_BUDGETS = {"smoke": Budget(SMOKE), "laptop": Budget({}), "gpu": Budget({}, sweep_args=GPU)}
OPTIMIZER_PAPER = "CS231n notes, Neural Networks Part 3 (parameter updates)"
OPTIMIZER_SECTION = "Part VI, 6. Optimizers at tuned learning rates (CS231n, \"Neural Networks Part 3\")"
SGD = {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "lr": 0.1}
MOMENTUM = {"optimizer": "sgd", "momentum": 0.9, "nesterov": False, "lr": 0.1}
NESTEROV = {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.1}
ADAM = {"optimizer": "adam", "lr": 0.01}
RMSPROP = {"optimizer": "rmsprop", "lr": 0.001}
for name, sentence, a, b in (
        ("momentum_vs_sgd", "SGD with momentum almost always enjoys better converge rates than vanilla SGD",
         MOMENTUM, SGD),
        ("nesterov_vs_momentum", "Nesterov momentum works slightly better than standard momentum", NESTEROV,
         MOMENTUM),
        ("adam_vs_rmsprop", "Adam often works slightly better than RMSProp", ADAM, RMSPROP)):
    register_claim(Claim(
        name=f"optimizers_{name}",
        paper=OPTIMIZER_PAPER,
        sentence=sentence,
        space="search_spaces/optimizers.yaml",
        budgets=OPTIMIZER_BUDGETS,
        select_metric="val_error",
        comparison=better("train_loss", "min", a={k: v for k, v in a.items() if k != "lr"},
                          b={k: v for k, v in b.items() if k != "lr"}, by="paired"),
        results_section=OPTIMIZER_SECTION,
        variants=(pin(**a), pin(**b)),
    ))
