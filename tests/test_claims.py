"""Claims as code (issue 20): decide() on hand-built frames shaped like mlflow.search_runs output, the registry."""

from __future__ import annotations

import inspect
import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchestrator import claim_runs, claims, spaces, sweep, tracking
from orchestrator.claims import ClaimError, better, decide, get_claim, trend
from trainables import registry

ROOT = Path(__file__).resolve().parents[1]


def frame(arms: dict[str, list[float]], key: str = "roi_op", metric: str = "test_mask_ap",
          seeds: list[int] | None = None) -> pd.DataFrame:
    """One row per run as mlflow.search_runs gives it: params are strings, metrics floats, a status column."""
    rows = []
    for value, metrics in arms.items():
        for i, m in enumerate(metrics):
            seed = seeds[i] if seeds else i
            rows.append({"run_id": f"{value}-{seed}", "status": "FINISHED", f"params.{key}": value,
                         "params.seed": str(seed), f"metrics.{metric}": m, "tags.trainable": "mask_rcnn"})
    return pd.DataFrame(rows)


ROI = better("test_mask_ap", "max", a={"roi_op": "align"}, b={"roi_op": "pool"})


def test_clear_win_is_reproduced() -> None:
    v = decide(ROI, frame({"align": [0.72, 0.73, 0.74], "pool": [0.52, 0.51, 0.54]}))
    assert v.outcome == "reproduced"
    assert v.effect == pytest.approx(0.73 - 1.57 / 3)
    assert 0 < v.interval[0] < v.effect < v.interval[1]
    assert v.p < 0.05 and (v.n_a, v.n_b) == (3, 3) and v.test == "Welch t-test"


def test_clear_loss_is_not_reproduced_and_min_mode_flips_the_sign() -> None:
    v = decide(ROI, frame({"align": [0.50, 0.52, 0.51], "pool": [0.70, 0.72, 0.71]}))
    assert v.outcome == "not reproduced" and v.effect < 0 and v.interval[1] < 0
    # the same numbers as an error (lower is better): align's lower values are now the claimed win
    error = better("test_mask_ap", "min", a={"roi_op": "align"}, b={"roi_op": "pool"})
    v = decide(error, frame({"align": [0.50, 0.52, 0.51], "pool": [0.70, 0.72, 0.71]}))
    assert v.outcome == "reproduced" and v.effect == pytest.approx(0.2)


def test_tie_is_inconclusive() -> None:
    v = decide(ROI, frame({"align": [0.60, 0.70, 0.65], "pool": [0.66, 0.61, 0.69]}))
    assert v.outcome == "inconclusive"
    assert v.interval[0] < 0 < v.interval[1] and v.p > 0.05


def test_fewer_than_three_runs_an_arm_give_no_verdict() -> None:
    runs = frame({"align": [0.9, 0.91], "pool": [0.1, 0.11, 0.12]})
    v = decide(ROI, runs)
    assert v.outcome == "too few runs" and (v.n_a, v.n_b) == (2, 3) and math.isnan(v.effect)
    # a failed run is not a run of the arm: three rows, two finished
    runs = frame({"align": [0.9, 0.91, 0.92], "pool": [0.1, 0.11, 0.12]})
    runs.loc[0, "status"] = "FAILED"
    assert decide(ROI, runs).outcome == "too few runs"


def test_paired_pairs_by_seed_not_by_row_order() -> None:
    # a strong seed effect, align ahead by 0.01 or 0.02 in every seed; Welch sees only the spread between seeds
    align, pool = [0.31, 0.52, 0.71, 0.92], [0.30, 0.50, 0.70, 0.90]
    runs = pd.concat([frame({"align": align}, seeds=[0, 1, 2, 3]),
                      frame({"pool": pool[::-1]}, seeds=[3, 2, 1, 0]),  # rows shuffled against the seeds
                      frame({"pool": [0.0]}, seeds=[9])], ignore_index=True)  # a seed without a partner
    assert decide(ROI, runs).outcome == "inconclusive"  # Welch
    paired = better("test_mask_ap", "max", a={"roi_op": "align"}, b={"roi_op": "pool"}, by="paired")
    v = decide(paired, runs)
    assert v.outcome == "reproduced" and (v.n_a, v.n_b) == (4, 4) and v.test == "paired t-test by seed"
    assert v.effect == pytest.approx(0.015)
    bootstrap = better("test_mask_ap", "max", a={"roi_op": "align"}, b={"roi_op": "pool"}, by="bootstrap")
    v = decide(bootstrap, runs)  # an unpaired bootstrap of the difference of means: the seed spread swamps it
    assert v.outcome == "inconclusive" and math.isnan(v.p)


def test_paired_on_the_same_weights_reads_two_metrics_of_one_run() -> None:
    runs = frame({"x": [0.10, 0.30, 0.50]}, key="mode", metric="test_error")
    runs["metrics.test_error_det"] = runs["metrics.test_error"] + [0.02, 0.021, 0.019]
    same = better("test_error", "min", a={}, b={}, b_metric="test_error_det", by="paired")
    v = decide(same, runs)
    assert v.outcome == "reproduced" and v.effect == pytest.approx(0.02)


def test_trend_compares_the_swept_extremes() -> None:
    rows = [{"status": "FINISHED", "params.p_L": str(p), "params.seed": str(s), "metrics.val_error": e}
            for p, errs in {"0.5": [0.30, 0.31, 0.29], "0.8": [0.2, 0.21, 0.22], "1.0": [0.10, 0.11, 0.12]}.items()
            for s, e in enumerate(errs)]
    v = decide(trend("val_error", "min", "p_L"), pd.DataFrame(rows))
    assert v.outcome == "reproduced" and v.effect == pytest.approx(0.19)
    assert decide(trend("val_error", "min", "p_L", increasing=False), pd.DataFrame(rows)).outcome == "not reproduced"


def test_unknown_claim_is_one_line_listing_the_names() -> None:
    with pytest.raises(ClaimError) as err:
        get_claim("roialign")
    message = str(err.value)
    assert "\n" not in message and "unknown claim 'roialign'" in message
    assert "mask_rcnn_roialign" in message and "densecap_bilinear" in message


def test_shipped_claims_name_existing_spaces_and_decide_on_their_params() -> None:
    shipped = claims.all_claims()
    assert len(shipped) >= 2
    for claim in shipped.values():
        assert claim.command in ("nas", "rl") or (ROOT / claim.space).is_file(), claim.space  # bare rl: per variant
        assert set(claims.BUDGETS) <= set(claim.budgets) and claim.sentence and claim.paper
        for preset in claim.budgets.values():
            assert preset.seeds >= claims.MIN_RUNS
    roi = get_claim("mask_rcnn_roialign")
    text = (ROOT / roi.space).read_text()
    assert "roi_op" in text and roi.select_metric in text  # the claim names the space's own key and metric
    runs = frame({"align": [0.72, 0.73, 0.74], "pool": [0.52, 0.51, 0.54]}, metric="selected/test_mask_ap")
    assert roi.read_at == "selected" and decide(roi, runs).outcome == "reproduced"


def test_a_missing_column_is_one_line() -> None:
    with pytest.raises(ClaimError, match="no metric column metrics.test_mask_ap"):
        decide(ROI, frame({"align": [1.0, 1.0, 1.0]}, metric="other"))


def test_a_threshold_is_a_one_sample_test() -> None:
    solved = claims.reaches("eval_return", "max", 195)
    runs = frame({"dqn": [480.0, 500.0, 470.0]}, key="algo", metric="eval_return")
    v = decide(solved, runs)
    assert v.outcome == "reproduced" and v.effect == pytest.approx(1450 / 3 - 195) and v.n_a == 3
    assert v.test == "one-sample t-test" and v.line().endswith("n = 3")
    v = decide(solved, frame({"dqn": [20.0, 25.0, 22.0]}, key="algo", metric="eval_return"))
    assert v.outcome == "not reproduced" and v.interval[1] < 0
    v = decide(solved, frame({"dqn": [100.0, 300.0, 200.0]}, key="algo", metric="eval_return"))
    assert v.outcome == "inconclusive"
    with pytest.raises(ClaimError, match="nothing to pair"):
        claims.reaches("eval_return", "max", 195, by="paired")


def test_identical_paired_differences_have_no_p_and_decide_nothing() -> None:
    from orchestrator import stats

    # two seeds that both moved by exactly 1: scipy's t is infinite (p = 0); there is no spread to test
    assert math.isnan(stats.paired_p([1.0, 2.0], [0.0, 1.0]))
    assert stats.paired_p([1.0, 2.0, 3.0], [0.0, 1.5, 2.0]) < 0.2
    paired = better("test_mask_ap", "max", a={"roi_op": "align"}, b={"roi_op": "pool"}, by="paired")
    v = decide(paired, frame({"align": [0.7, 0.8, 0.9], "pool": [0.6, 0.7, 0.8]}))
    assert v.outcome == "inconclusive" and math.isnan(v.p)


# ---- every shipped claim, statically: its commands validate, its arms select runs its commands make, its metrics are
# declared, its section exists (issue 20). No Ray is started: the CLIs' own parsers and validation run.

RESULTS = ROOT / "docs" / "RESULTS.md"


def results_sections() -> set[str]:
    """``"Part I, 1. Full pre-activation ..."``: each heading of docs/RESULTS.md under its part (section numbers
    repeat from part to part, so a claim names both)."""
    part, found = "", set()
    for line in RESULTS.read_text().splitlines():
        if (heading := re.match(r"## (Part [IVX]+):", line)) is not None:
            part = heading.group(1)
        elif (heading := re.match(r"#{3,4} (.+?)\s*$", line)) is not None and part:
            found.add(f"{part}, {heading.group(1)}")
    return found


def split_variant(variant: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """A variant's ``--set`` pins as typed overrides, and its other flags (as the repro command splits them)."""
    pins, other = claim_runs.split_set(variant)
    return spaces.parse_overrides([f"{key}={value}" for key, value in pins.items()]), other


def trial_params(claim: claims.Claim, preset: str) -> tuple[registry.TrainableSpec, list[dict[str, str]]]:
    """The params (as MLflow stores them) of every trial a sweep or rl claim's commands launch at ``preset``: the
    space with the budget's overrides and each variant's pins, validated as the CLI does before Ray starts."""
    budget = claim.budgets[preset]
    rows: list[dict[str, str]] = []
    spec = None
    for variant in claim.variants:
        pins, other = split_variant(variant)
        space_file, algorithm = claim.space, None
        if claim.command == "rl":  # a bare rl claim: each variant names its algorithm, and maybe its --sweep
            algorithm, other = other[0], other[1:]
            if other[:1] == ["--sweep"]:
                space_file, other = other[1], other[2:]
        assert not other, f"{claim.name}: a {claim.command} variant only pins values, got {other}"
        # the offline RL data is a folder on the user's disk, checked when the claim runs: not here
        overrides = {k: v for k, v in {**budget.overrides, **pins}.items() if k != "data"}
        if space_file:
            space = spaces.load_space(str(ROOT / space_file)).with_overrides(overrides)
        else:  # a plain run: orchestrator.rl's one-trial space
            space = spaces.SweepSpace(name=algorithm, path=ROOT, trainable=algorithm).with_overrides(overrides)
        space.seeds = budget.seeds
        spec = registry.get(space.trainable)
        if claim.command.startswith("rl"):
            wanted = algorithm or claim.command.split()[1]
            assert space.trainable == wanted, f"{claim.name}: space is for {space.trainable}"
        base = space.validate(spec)
        combos = space.variants if space.variants is not None else [
            dict(zip(space.searched, values, strict=True))
            for values in itertools.product(*(prim["grid"] for prim in space.searched.values()))]
        for combo in combos:
            for offset in range(budget.seeds):
                config = spec.resolve({**space.fixed, **combo, "seed": int(base["seed"]) + offset})
                rows.append({**tracking.flatten(config), "tags.trainable": spec.name})
    assert spec is not None
    return spec, rows


def search_params(claim: claims.Claim, preset: str) -> list[dict[str, str]]:
    """The parent-run params of every search a ``nas`` claim's commands launch at ``preset`` (one per seed and
    variant), from ``orchestrator.nas``'s own plan, which validates the children's config."""
    from orchestrator import nas
    from repro.claims_common import pin

    budget = claim.budgets[preset]
    rows = []
    for variant in claim.variants:
        pins, other = split_variant(variant)
        overrides = {**budget.overrides, **pins}
        for seed in range(budget.seeds):
            argv = ["--seed", str(seed), *(["--space", claim.space] if claim.space else []), *budget.sweep_args,
                    *other, *(pin(**overrides) if overrides else ())]
            rows.append(tracking.flatten(nas.plan(nas.build_parser().parse_args(argv)).params))
    return rows


def arms(spec: claims.Comparison) -> list[Mapping[str, Any]]:
    if isinstance(spec, claims.Better):
        return [spec.a, spec.b]
    return [spec.where]


def selected(rows: list[dict[str, str]], selector: Mapping[str, Any]) -> list[dict[str, str]]:
    # decide() compares a selector's values as the strings MLflow logged
    return [row for row in rows if all(row.get(key) == str(value) for key, value in selector.items())]


def nas_parent_metrics() -> dict[str, str]:
    """The summary metrics a NAS parent run logs (orchestrator/nas.py's log_summary) and which way is better."""
    from orchestrator import nas

    source = inspect.getsource(nas.log_summary)
    names = ("best_reward", "best_accuracy", "best_latency_ms", "reward_first_quarter", "reward_last_quarter")
    return {name: "min" if "latency" in name else "max" for name in names if f'"{name}"' in source}


SHIPPED = sorted(claims.all_claims())


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_claim_names_a_results_section_and_a_fitting_unit(name: str) -> None:
    claim = get_claim(name)
    assert claim.results_section in results_sections(), f"{name}: no heading '{claim.results_section}'"
    assert (claim.unit == "search") == (claim.command == "nas"), f"{name}: a NAS search is one sample, a trial is"
    if claim.command not in ("nas", "rl"):  # a bare rl claim's variants name their own spaces (trial_params)
        assert (ROOT / claim.space).is_file(), claim.space


@pytest.mark.parametrize("preset", claims.BUDGETS)
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_claims_budget_validates_and_its_arms_select_runs(name: str, preset: str) -> None:
    claim = get_claim(name)
    spec = claim.comparison
    budget = claim.budgets[preset]
    if claim.command == "nas":
        rows = search_params(claim, preset)
        declared = nas_parent_metrics()
        for metric, mode in ((spec.metric, spec.mode), (getattr(spec, "b_metric", None) or spec.metric, spec.mode),
                             (claim.select_metric, None)):
            assert metric in declared, f"{name}: a NAS parent run logs no metric '{metric}'"
            assert mode in (None, declared[metric]), f"{name}: {metric} is better when {declared[metric]}"
    else:
        if claim.command == "sweep":
            parser = sweep.build_parser()
            parser.parse_args([claim.space, "--seeds", str(budget.seeds), *budget.sweep_args])  # the flags exist
        trainable, rows = trial_params(claim, preset)
        for metric in (spec.metric, getattr(spec, "b_metric", None) or spec.metric):
            assert trainable.mode(metric) == spec.mode, f"{name}: {metric} is better when {trainable.mode(metric)}"
        trainable.mode(claim.select_metric)  # declared, or ConfigError
    # every arm is made by the claim's own commands, with at least MIN_RUNS runs (seeds) in it
    for selector in arms(spec):
        chosen = selected(rows, selector)
        assert len(chosen) >= claims.MIN_RUNS, f"{name} ({preset}): arm {dict(selector)} selects {len(chosen)} runs"
    if isinstance(spec, claims.Trend):
        values = {row.get(spec.over) for row in selected(rows, spec.where)}
        assert len(values) >= 2, f"{name}: a trend over '{spec.over}' needs two values, the runs have {values}"
