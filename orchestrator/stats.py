"""The project's statistics in one place: mean/std/n over seeds, Student-t intervals, Welch and paired t-tests, and
the Pareto front of two objectives. Every test and interval is scipy's; this module only fixes the conventions
(std with n - 1, NaN instead of an exception when there are too few runs, warnings of near-equal samples silenced).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95  # the project's intervals are 95%; its tests are at the matching 5% level
ALPHA = 1 - LEVEL


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float)
    return array[~np.isnan(array)]


def summarize(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, std with ddof=1, n) over the non-NaN values; the std is NaN for n < 2, the mean NaN for n = 0."""
    array = _finite(values)
    n = len(array)
    mean = float(array.mean()) if n else math.nan
    std = float(array.std(ddof=1)) if n >= 2 else math.nan  # s = sqrt(sum (x - mean)^2 / (n - 1))
    return mean, std, n


def interval_from_summary(mean: float, std: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval for the mean of n runs: mean ± t_{(1+level)/2, n-1} · s / sqrt(n); NaN for n < 2."""
    from scipy import stats

    if n < 2 or not np.isfinite(std):
        return (math.nan, math.nan)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)  # s = 0 gives the point [mean, mean]
    return (float(mean - half), float(mean + half))


def t_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (NaNs dropped); (NaN, NaN) for fewer than two values."""
    mean, std, n = summarize(values)
    return interval_from_summary(mean, std, n, level)


def group_summary(frame: pd.DataFrame, by: Sequence[str], value: str, level: float = LEVEL) -> pd.DataFrame:
    """Per group of ``by`` (in order of first appearance; missing keys form their own group): mean, std (n - 1),
    n and the t-interval ci_low, ci_high of column ``value``, NaN values left out. Without keys: one row."""
    data = frame.dropna(subset=[value])
    if by:
        out = data.groupby(list(by), dropna=False, sort=False)[value].agg(mean="mean", std="std", n="count")
        out = out.reset_index()
    else:
        mean, std, n = summarize(data[value])
        out = pd.DataFrame({"mean": [mean], "std": [std], "n": [n]})
    intervals = [interval_from_summary(m, s, int(n), level) for m, s, n in zip(out["mean"], out["std"], out["n"],
                                                                                strict=True)]
    out["n"] = out["n"].astype(int)
    out["ci_low"] = [low for low, _ in intervals]
    out["ci_high"] = [high for _, high in intervals]
    return out


def welch_p(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances) of mean(a) = mean(b); NaN when a sample has < 2 values
    or neither has any spread."""
    from scipy import stats

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():  # nearly equal samples: scipy warns, and the p-value says the same
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def paired_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired t-test of mean(a - b) = 0 (a[i] and b[i] are one pair, e.g. one seed); NaN for
    fewer than two pairs or differences without spread."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        return math.nan
    differences = a - b
    if np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12):  # equal up to float rounding
        # identical differences (two seeds that moved by the same amount): scipy's t is infinite and its p 0, which
        # reads as overwhelming evidence; there is no spread to test against, so there is no p
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(a, b).pvalue)


def quarter_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last quarter (at least one value each) of ``values`` in their order, NaNs
    dropped: did a search's samples get better while it ran? (NaN, NaN) when there is no value."""
    array = _finite(values)
    if not len(array):
        return (math.nan, math.nan)
    q = max(1, len(array) // 4)
    return float(array[:q].mean()), float(array[-q:].mean())


def pareto_mask(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the points no other point dominates (at least as good in every objective, better in one). Equal
    points do not dominate each other: duplicates on the front are all kept."""
    signed = np.asarray(points, dtype=float) * np.where(maximize, -1.0, 1.0)  # all objectives: lower is better
    front = np.ones(len(signed), dtype=bool)
    for i, p in enumerate(signed):
        dominated = np.all(signed <= p, axis=1) & np.any(signed < p, axis=1)
        front[i] = not dominated.any()
    return front


def pareto_front(frame: pd.DataFrame, x: str, y: str, x_mode: str = "min", y_mode: str = "max") -> pd.DataFrame:
    """The rows of ``frame`` on the Pareto front of columns ``x`` and ``y`` (each "min" or "max" is better), best
    ``x`` first. Rows missing either value are not candidates. The NAS front is ``x="latency_ms", x_mode="min",
    y="accuracy", y_mode="max"``."""
    for mode in (x_mode, y_mode):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r}: give 'min' or 'max'")
    done = frame.dropna(subset=[x, y])
    mask = pareto_mask(done[[x, y]].to_numpy(), [x_mode == "max", y_mode == "max"])
    return done[mask].sort_values([x, y], ascending=[x_mode == "min", y_mode == "min"], kind="stable")


def welch_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """Welch t-interval of mean(a) - mean(b) (scipy's, Welch-Satterthwaite degrees of freedom), the interval that
    matches :func:`welch_p`; (NaN, NaN) when a sample has < 2 values or neither has any spread."""
    from scipy import stats

    a, b = _finite(a), _finite(b)
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return (float(low), float(high))
