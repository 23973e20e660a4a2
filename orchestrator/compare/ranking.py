"""Ranking the groups and judging the lead: seeds folded into mean, std, n and a 95% t-interval
(``orchestrator.stats``), best first in the metric's direction, and the winner tested against the runner-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from orchestrator import stats
from orchestrator.compare.read import SEED
from orchestrator.tables import fmt_number


def aggregate(table: pd.DataFrame, by: Sequence[str], value: str, mode: str) -> pd.DataFrame:
    """Groups of trials ranked best first: the keys, mean, std (n-1), n, ci_low, ci_high (95% t-interval)."""
    groups = stats.group_summary(table, by, value)
    groups = groups.sort_values("mean", ascending=mode == "min", kind="stable").reset_index(drop=True)
    groups.insert(0, "rank", range(1, len(groups) + 1))
    return groups


def group_label(row: pd.Series | dict, by: Sequence[str]) -> str:
    return ", ".join(f"{key}={fmt_number(row[key])}" for key in by) or "all runs"


def group_values(table: pd.DataFrame, by: Sequence[str], row: pd.Series) -> pd.DataFrame:
    """The trials of the group that ``row`` (of ``aggregate``) stands for."""
    mask = pd.Series(True, index=table.index)
    for key in by:
        mask &= table[key].isna() if pd.isna(row[key]) else table[key] == row[key]
    return table[mask]


@dataclass
class Verdict:
    """Is the top group distinguishable from the runner-up? ``text`` says it in plain words."""

    text: str
    distinguishable: bool | None = None
    difference: float = math.nan
    welch_p: float = math.nan
    paired_p: float = math.nan
    pairs: int = 0
    intervals_overlap: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


def top_two_verdict(table: pd.DataFrame, groups: pd.DataFrame, by: Sequence[str], value: str,
                    mode: str) -> Verdict:
    """Welch's t-test (unequal variances) of the top group against the runner-up when both have n >= 2; a paired
    t-test on the seeds both groups ran (pairs cancel what a seed does to every setting); and whether the 95%
    intervals overlap. The paired test decides when there are >= 2 pairs, else Welch's."""
    if len(groups) < 2:
        return Verdict("Only one group: nothing to compare it with.")
    first, second = groups.iloc[0], groups.iloc[1]
    name1, name2 = group_label(first, by), group_label(second, by)
    a = group_values(table, by, first).dropna(subset=[value])
    b = group_values(table, by, second).dropna(subset=[value])
    diff = float(first["mean"] - second["mean"])
    better = (f"the best is {fmt_number(abs(diff))} {'lower' if mode == 'min' else 'higher'}" if diff
              else "equal means")
    head = (f"Best: {name1} with {value} {fmt_number(first['mean'])} ± {fmt_number(first['std'])} "
            f"(n={int(first['n'])}); runner-up: {name2} with {fmt_number(second['mean'])} ± "
            f"{fmt_number(second['std'])} (n={int(second['n'])}); {better}.")
    if len(a) < 2 or len(b) < 2:
        return Verdict(f"{head} Cannot tell it from seed noise: a group has a single run (run more seeds).",
                       difference=diff)
    verdict = Verdict(head, difference=diff, welch_p=stats.welch_p(a[value], b[value]))
    if SEED in a.columns and a[SEED].notna().all() and b[SEED].notna().all() \
            and a[SEED].is_unique and b[SEED].is_unique:
        joined = a.merge(b, on=SEED, suffixes=("_a", "_b"))
        verdict.pairs = len(joined)
        if len(joined) >= 2:
            verdict.paired_p = stats.paired_p(joined[f"{value}_a"], joined[f"{value}_b"])
    verdict.intervals_overlap = bool(first["ci_low"] <= second["ci_high"] and second["ci_low"] <= first["ci_high"])
    paired = verdict.pairs >= 2 and np.isfinite(verdict.paired_p)
    deciding = verdict.paired_p if paired else verdict.welch_p
    tests = f"Welch's t-test p={fmt_number(verdict.welch_p)}"
    if verdict.pairs >= 2:
        tests = f"paired t-test over {verdict.pairs} seeds p={fmt_number(verdict.paired_p)}; " + tests
    overlap = "overlap" if verdict.intervals_overlap else "do not overlap"
    if diff == 0:
        verdict.distinguishable = False
        verdict.text = f"{head} The two are tied: NOT distinguishable (the 95% intervals {overlap})."
        return verdict
    if not np.isfinite(deciding):
        verdict.text = (f"{head} The test is undefined (no spread over seeds in either group); the 95% intervals "
                        f"{overlap}.")
        return verdict
    verdict.distinguishable = bool(deciding < stats.ALPHA)
    claim = ("It is distinguishable from seed noise at the 5% level" if verdict.distinguishable
             else "It is NOT distinguishable from seed noise at the 5% level")
    claim += ", decided by the paired test" if paired else ""
    verdict.text = f"{head} {claim} ({tests}; the 95% intervals {overlap})."
    return verdict


def pareto_points(points: pd.DataFrame, objectives: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The trials with both objectives, a ``pareto`` column marking the front (objectives: (y, mode), (x, mode))."""
    names = [name for name, _ in objectives]
    points = points.dropna(subset=names).copy()
    points["pareto"] = stats.pareto_mask(points[names].to_numpy(), [mode == "max" for _, mode in objectives])
    return points
