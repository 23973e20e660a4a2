"""Claims as code (issue 20): a paper's sentence, the sweep that tests it, and the statistical test that decides it.

A :class:`Claim` is data: the paper, the sentence as docs/RESULTS.md quotes it, the search space (a file of
``search_spaces/`` or ``repro/``) with budget presets ``smoke`` / ``laptop`` / ``gpu``, the metric and where it is
read, and a comparison (:func:`better`, :func:`trend`) that carries its test and level. :func:`decide` turns a frame
of runs shaped like ``mlflow.search_runs`` output into a :class:`Verdict`.

The orchestrator never names a method's keys or metrics (docs DESIGN.md), so the shipped claims are registered in
``repro/claims.py`` (the repro scripts' room); :func:`get_claim` imports the modules of :data:`CLAIM_MODULES` on
first use, as ``trainables.registry.get`` imports a trainable's module.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from orchestrator import stats

Mode = Literal["min", "max"]
TestName = Literal["paired", "welch", "bootstrap"]
Outcome = Literal["reproduced", "not reproduced", "inconclusive", "too few runs"]
BUDGETS = ("smoke", "laptop", "gpu")
MIN_RUNS = 3  # fewer seeds than this per arm give no verdict at all (issue 20)
CLAIM_MODULES: tuple[str, ...] = ("repro.claims",)  # modules whose import registers the shipped claims


class ClaimError(ValueError):
    """A claim is unknown or malformed, or the runs cannot be read for it. The message is one readable line."""


@dataclass(frozen=True)
class Budget:
    """One budget preset of a claim's sweep: config overrides (``--set``), seeds, and extra sweep flags."""

    overrides: Mapping[str, Any] = field(default_factory=dict)
    seeds: int = MIN_RUNS
    sweep_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Better:
    """Arm ``a`` is better than arm ``b`` in ``metric`` (``mode``: which direction is better). An arm is the runs whose
    params equal the selector; ``b_metric`` reads arm b from another metric (two inference rules of the same run,
    i.e. the same weights: give ``b = a`` and ``test="paired"``). Paired tests pair the arms' runs by ``pair_by``."""

    metric: str
    mode: Mode
    a: Mapping[str, Any]
    b: Mapping[str, Any]
    test: TestName = "welch"
    level: float = stats.LEVEL
    pair_by: str = "seed"
    b_metric: str | None = None


@dataclass(frozen=True)
class Trend:
    """``metric`` gets better (``mode``) as the swept param ``over`` grows (``increasing``) or shrinks. Decided as the
    endpoints of the sweep compared: the runs at the most favourable end against those at the other end, so a trend
    is a :class:`Better` between ``over``'s extreme values, with the same tests."""

    metric: str
    mode: Mode
    over: str
    increasing: bool = True
    where: Mapping[str, Any] = field(default_factory=dict)  # the other params held fixed
    test: TestName = "welch"
    level: float = stats.LEVEL
    pair_by: str = "seed"


@dataclass(frozen=True)
class Reaches:
    """``metric`` reaches ``threshold`` (``mode`` max: at least it; min: at most it) on average over the runs of
    ``where``: a one-sample test of the runs against the threshold (DQN's "CartPole solved" at 195)."""

    metric: str
    mode: Mode
    threshold: float
    where: Mapping[str, Any] = field(default_factory=dict)
    test: TestName = "welch"  # "welch" here is the one-sample t-test (a Welch test against a constant)
    level: float = stats.LEVEL


Comparison = Better | Trend | Reaches


def better(metric: str, mode: Mode, a: Mapping[str, Any], b: Mapping[str, Any], *, by: TestName = "welch",
           level: float = stats.LEVEL, pair_by: str = "seed", b_metric: str | None = None) -> Better:
    """Arm ``a`` beats arm ``b`` in ``metric``, decided by test ``by`` at ``level``."""
    if mode not in ("min", "max"):
        raise ClaimError(f"mode {mode!r}: give 'min' or 'max'")
    if by not in ("paired", "welch", "bootstrap"):
        raise ClaimError(f"test {by!r}: give 'paired', 'welch' or 'bootstrap'")
    return Better(metric, mode, dict(a), dict(b), by, level, pair_by, b_metric)


def trend(metric: str, mode: Mode, over: str, *, increasing: bool = True, where: Mapping[str, Any] | None = None,
          by: TestName = "welch", level: float = stats.LEVEL, pair_by: str = "seed") -> Trend:
    """``metric`` improves as ``over`` grows (or shrinks, ``increasing=False``), decided by test ``by``."""
    better(metric, mode, {}, {}, by=by)  # the same checks of mode and test
    return Trend(metric, mode, over, increasing, dict(where or {}), by, level, pair_by)


def reaches(metric: str, mode: Mode, threshold: float, *, where: Mapping[str, Any] | None = None,
            by: TestName = "welch", level: float = stats.LEVEL) -> Reaches:
    """The runs' mean ``metric`` is past ``threshold`` in the ``mode`` direction (one-sample t-test or bootstrap)."""
    if by == "paired":
        raise ClaimError("a threshold has nothing to pair with: give by='welch' (one-sample t) or 'bootstrap'")
    better(metric, mode, {}, {}, by=by)
    return Reaches(metric, mode, float(threshold), dict(where or {}), by, level)


COMMANDS = ("sweep", "rl", "nas")  # the orchestrator commands a claim's runs come from
Unit = Literal["trial", "search"]


@dataclass(frozen=True)
class Claim:
    """A paper's claim and how it is checked.

    How its runs are made: ``command`` is an orchestrator command with its leading arguments (``"sweep"``,
    ``"rl dqn"``, ``"nas"``); ``space`` is the search space it runs (``sweep SPACE``, ``rl ALGO --sweep SPACE``; for
    ``nas``, its child ``--space``, or empty for the default). Each of ``variants`` (extra flags) is one command; a
    ``nas`` command is run once per seed (``--seed S``), the others take ``--seeds N``. A budget's ``overrides`` go to
    ``--set`` and its ``sweep_args`` to every command.

    What one sample is: ``unit="trial"``, each trial's run (a child of a command's parent run); ``unit="search"``,
    each command's parent run itself (a NAS search: its params and summary metrics).

    Where the metric is read: ``select_metric`` is the validation metric the sweep selects on; the comparison's metric
    is the one reported (test), read at ``read_at``: the run's last report (``final``, MLflow's ``metrics.<name>``),
    its best one (``best``, ``metrics.best/<name>`` as the tracker logs it) or the report where ``select_metric`` was
    best (``selected``: the reported metric at the validation-selected epoch, read from the metric histories).
    """

    name: str
    paper: str
    sentence: str
    space: str  # a search-space file, relative to the repository root
    budgets: Mapping[str, Budget]
    select_metric: str
    comparison: Comparison
    read_at: Literal["final", "best", "selected"] = "final"
    results_section: str = ""  # the text of the docs/RESULTS.md heading that reports it (its generated block)
    command: str = "sweep"
    variants: tuple[tuple[str, ...], ...] = ((),)
    unit: Unit = "trial"

    def __post_init__(self) -> None:
        if self.command.split()[0] not in COMMANDS:
            raise ClaimError(f"claim '{self.name}': command {self.command!r} is not one of {list(COMMANDS)}")
        if self.unit not in ("trial", "search"):
            raise ClaimError(f"claim '{self.name}': unit {self.unit!r}; give 'trial' or 'search'")
        if self.read_at not in ("final", "best", "selected"):
            raise ClaimError(f"claim '{self.name}': read_at {self.read_at!r}; give 'final', 'best' or 'selected'")
        missing = [b for b in BUDGETS if b not in self.budgets]
        if missing:
            raise ClaimError(f"claim '{self.name}' lacks budget presets {missing}; every claim has {list(BUDGETS)}")
        if self.budgets["smoke"].seeds < MIN_RUNS or self.budgets["laptop"].seeds < MIN_RUNS:
            raise ClaimError(f"claim '{self.name}': at least {MIN_RUNS} seeds, or no verdict can come of it")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a claim's test. ``effect`` is mean(a) - mean(b) signed so that positive is the claimed
    direction; ``interval`` is its interval at ``level``; ``p`` is NaN for the bootstrap."""

    outcome: Outcome
    effect: float
    interval: tuple[float, float]
    p: float
    n_a: int
    n_b: int
    test: str
    level: float

    def line(self) -> str:
        low, high = self.interval
        n = f"n = {self.n_a} vs {self.n_b}" if self.n_b else f"n = {self.n_a}"  # a threshold has one sample
        return (f"{self.outcome}: effect {self.effect:+.4g} [{low:.4g}, {high:.4g}] at {self.level:.0%}, "
                f"p = {self.p:.2g} ({self.test}), {n}")


_CLAIMS: dict[str, Claim] = {}
_discovered = False


def register_claim(claim: Claim) -> Claim:
    """Add ``claim`` to the registry; a second claim of the same name is a mistake, not an update."""
    if claim.name in _CLAIMS and _CLAIMS[claim.name] != claim:
        raise ClaimError(f"claim '{claim.name}' is registered twice")
    _CLAIMS[claim.name] = claim
    return claim


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in CLAIM_MODULES:
            importlib.import_module(module)
        _discovered = True


def all_claims() -> dict[str, Claim]:
    """Every registered claim by name, the shipped ones included."""
    _discover()
    return dict(sorted(_CLAIMS.items()))


def get_claim(name: str) -> Claim:
    """The claim called ``name``; an unknown name is one line listing the known ones."""
    claims = all_claims()
    if name not in claims:
        raise ClaimError(f"unknown claim '{name}'; known: {', '.join(claims) or '(none)'}")
    return claims[name]


def _param_column(runs: pd.DataFrame, key: str) -> str:
    column = f"params.{key}"
    if column not in runs:
        raise ClaimError(f"the runs have no param '{key}' (no column {column})")
    return column


def _select(runs: pd.DataFrame, selector: Mapping[str, Any]) -> pd.DataFrame:
    # MLflow stores params as strings, so the selector's values are compared as the strings MLflow logged. A key
    # "tags.X" selects on a run tag instead: arms of different trainables ({"tags.trainable": "bc"}) share no param.
    mask = pd.Series(True, index=runs.index)
    for key, value in selector.items():
        column = key if key.startswith("tags.") else _param_column(runs, key)
        if column not in runs:
            raise ClaimError(f"the runs have no tag '{key.removeprefix('tags.')}' (no column {column})")
        mask &= runs[column].astype(str) == str(value)
    return runs[mask]


def metric_column(metric: str, read_at: str) -> str:
    """The column of ``metric`` read at ``read_at`` in a runs frame (``selected/``: filled in by the reader from the
    metric histories, since MLflow keeps only the last value of a metric as a column)."""
    return {"final": f"metrics.{metric}", "best": f"metrics.best/{metric}",
            "selected": f"metrics.selected/{metric}"}[read_at]


def _metric_column(runs: pd.DataFrame, metric: str, read_at: str) -> str:
    column = metric_column(metric, read_at)
    if column not in runs:
        raise ClaimError(f"the runs have no metric column {column}")
    return column


def _endpoints(runs: pd.DataFrame, spec: Trend) -> Better:
    """The trend as a comparison of the swept value's two extremes (numeric order when the values are numbers)."""
    values = _select(runs, spec.where)[_param_column(runs, spec.over)].dropna().astype(str).unique().tolist()
    if len(values) < 2:
        raise ClaimError(f"a trend over '{spec.over}' needs at least two values; the runs have {values}")
    try:
        values.sort(key=float)
    except ValueError:
        values.sort()
    high, low = {**spec.where, spec.over: values[-1]}, {**spec.where, spec.over: values[0]}
    a, b = (high, low) if spec.increasing else (low, high)
    return Better(spec.metric, spec.mode, a, b, spec.test, spec.level, spec.pair_by)


def _bootstrap_interval(a: np.ndarray, b: np.ndarray, paired: bool, level: float) -> tuple[float, float]:
    from scipy import stats as sp_stats

    # percentile intervals: BCa's jackknife degenerates at 3 seeds; a fixed rng makes a verdict repeatable
    rng = np.random.default_rng(0)
    if paired:
        result = sp_stats.bootstrap((a - b,), np.mean, confidence_level=level, method="percentile",
                                    n_resamples=4000, rng=rng)
    else:
        def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)

        result = sp_stats.bootstrap((a, b), diff, confidence_level=level, method="percentile", n_resamples=4000,
                                    rng=rng)
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def decide(claim: Claim | Comparison, runs: pd.DataFrame, read_at: str | None = None) -> Verdict:
    """Decide a claim (or a bare comparison) on ``runs`` (``mlflow.search_runs`` shape; runs that did not finish are
    left out when there is a ``status`` column). ``reproduced``: the claimed effect is significant at the level;
    ``not reproduced``: the opposite one is; ``inconclusive``: neither; ``too few runs``: < 3 runs in an arm."""
    spec = claim.comparison if isinstance(claim, Claim) else claim
    read_at = read_at or (claim.read_at if isinstance(claim, Claim) else "final")
    if "status" in runs:
        runs = runs[runs["status"] == "FINISHED"]  # a failed or killed trial's last report is not its result
    if isinstance(spec, Trend):
        spec = _endpoints(runs, spec)
    if isinstance(spec, Reaches):
        return _decide_threshold(spec, runs, read_at)
    paired = spec.test == "paired" or (spec.test == "bootstrap" and spec.b_metric is not None)
    col_a = _metric_column(runs, spec.metric, read_at)
    col_b = _metric_column(runs, spec.b_metric or spec.metric, read_at)
    arm_a = _select(runs, spec.a).dropna(subset=[col_a])
    arm_b = _select(runs, spec.b).dropna(subset=[col_b])
    if paired:
        # pair by seed: only seeds present in both arms count, and each seed once per arm
        key = _param_column(runs, spec.pair_by)
        arm_a = arm_a.drop_duplicates(subset=[key]).set_index(key)
        arm_b = arm_b.drop_duplicates(subset=[key]).set_index(key)
        common = arm_a.index.intersection(arm_b.index)
        arm_a, arm_b = arm_a.loc[common], arm_b.loc[common]
    a, b = arm_a[col_a].to_numpy(float), arm_b[col_b].to_numpy(float)
    sign = 1.0 if spec.mode == "max" else -1.0  # effect > 0 means the claimed direction
    test_name = {"paired": f"paired t-test by {spec.pair_by}", "welch": "Welch t-test",
                 "bootstrap": "bootstrap (percentile)"}[spec.test]
    if len(a) < MIN_RUNS or len(b) < MIN_RUNS:
        return Verdict("too few runs", math.nan, (math.nan, math.nan), math.nan, len(a), len(b), test_name,
                       spec.level)
    effect = sign * (float(a.mean()) - float(b.mean()))
    if spec.test == "paired":
        p = stats.paired_p(a, b)
        low, high = stats.t_interval(sign * (a - b), spec.level)
    elif spec.test == "welch":
        p = stats.welch_p(a, b)
        low, high = (sign * x for x in stats.welch_interval(a, b, spec.level))
    else:
        p = math.nan
        low, high = (sign * x for x in _bootstrap_interval(a, b, paired, spec.level))
    low, high = min(low, high), max(low, high)
    if spec.test == "bootstrap":
        significant = bool(low > 0 or high < 0)  # the interval leaves out zero
    else:
        significant = bool(np.isfinite(p) and p < 1 - spec.level)  # NaN: no spread to test, so no decision
    outcome: Outcome = "inconclusive"
    if significant:
        outcome = "reproduced" if effect > 0 else "not reproduced"
    return Verdict(outcome, effect, (low, high), p, len(a), len(b), test_name, spec.level)


def _decide_threshold(spec: Reaches, runs: pd.DataFrame, read_at: str) -> Verdict:
    """One sample against a constant: effect = mean - threshold, signed so that positive is past it."""
    column = _metric_column(runs, spec.metric, read_at)
    values = _select(runs, spec.where)[column].dropna().to_numpy(float)
    sign = 1.0 if spec.mode == "max" else -1.0
    test_name = "one-sample t-test" if spec.test == "welch" else "bootstrap (percentile)"
    if len(values) < MIN_RUNS:
        return Verdict("too few runs", math.nan, (math.nan, math.nan), math.nan, len(values), 0, test_name,
                       spec.level)
    shifted = sign * (values - spec.threshold)
    effect = float(shifted.mean())
    if spec.test == "bootstrap":
        p = math.nan
        low, high = _bootstrap_interval(shifted, np.zeros_like(shifted), True, spec.level)
        significant = bool(low > 0 or high < 0)
    else:
        p = stats.paired_p(shifted, np.zeros_like(shifted))  # the one-sample t-test of the shifted values
        low, high = stats.t_interval(shifted, spec.level)
        significant = bool(np.isfinite(p) and p < 1 - spec.level)
    outcome: Outcome = "inconclusive"
    if significant:
        outcome = "reproduced" if effect > 0 else "not reproduced"
    return Verdict(outcome, effect, (low, high), p, len(values), 0, test_name, spec.level)


def arm_summary(claim: Claim, runs: pd.DataFrame) -> pd.DataFrame:
    """What the verdict compared, one row an arm: its selector, the metric as read, mean, std and n over its
    finished runs (unpaired: the table describes the arms; the verdict's test says how they were compared)."""
    spec = claim.comparison
    if "status" in runs:
        runs = runs[runs["status"] == "FINISHED"]
    if isinstance(spec, Trend):
        spec = _endpoints(runs, spec)
    arms = ([(spec.where, spec.metric)] if isinstance(spec, Reaches)
            else [(spec.a, spec.metric), (spec.b, spec.b_metric or spec.metric)])
    rows = []
    for selector, metric in arms:
        column = _metric_column(runs, metric, claim.read_at)
        mean, std, n = stats.summarize(_select(runs, selector)[column].dropna())
        arm = " ".join(f"{k}={v}" for k, v in selector.items()) or "all runs"
        rows.append({"arm": arm, "metric": f"{metric} ({claim.read_at})", "mean": mean, "std": std, "n": n})
    if isinstance(spec, Reaches):
        rows.append({"arm": "threshold", "metric": spec.metric, "mean": spec.threshold, "std": math.nan, "n": 0})
    return pd.DataFrame(rows)
