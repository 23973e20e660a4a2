"""``python -m orchestrator.compare``: which setting won, by how much, and is it more than seed noise.

Reads the sweep layout of ``orchestrator.tracking`` (a parent run per sweep or search, a nested child run per trial)
with ``mlflow.search_runs`` into pandas, groups the trials by their swept parameters (seeds folded into mean, std,
n and a 95% t-interval), ranks the groups, tests the winner against the runner-up, and writes tables, plots and a
self-contained HTML report. Reading and aggregation are plain functions over DataFrames, so they test without a CLI.

    python -m orchestrator.compare sd_rates
    python -m orchestrator.compare sd_rates --by p_L --metric test_error --at best --plots plots --html report.html
    python -m orchestrator.compare nas_space --pareto accuracy:max,latency_ms:min --reward reward:max --html nas.html
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import math
import os
import re
import shlex
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator import cli, tracking

PARENT_TAG = "tags.mlflow.parentRunId"
SEED = "seed"
ALPHA = 0.05  # the tests and the intervals are at 95%
# Pseudo-parameters --by accepts besides the runs' own params.
EXTRA_KEYS = {"experiment": "experiment", "sweep": "sweep"}
# Metric names that are better when larger; everything else (error, loss, latency, time) ranks by min.
_MAX_WORDS = ("accuracy", "acc", "reward", "return", "score", "auc", "f1", "precision", "recall", "iou", "map",
              "samples_per_second", "throughput")


# -------------------------------------------------------------------------------------------------------------
# Reading MLflow
# -------------------------------------------------------------------------------------------------------------
def open_store(cli_uri: str | None) -> str:
    """The tracking URI (project rules), checked: a server must answer, a sqlite file must already exist
    (comparing must never create an empty store)."""
    uri = tracking.resolve_tracking_uri(cli_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise cli.UserError(f"no MLflow store at {path} (run a sweep here first, or give --tracking-uri / "
                                "MLFLOW_TRACKING_URI)")
    else:
        tracking.check_reachable(uri)
    return uri


def resolve_experiments(client: Any, names: Sequence[str]) -> list[Any]:
    """Experiments by name, else by id; an unknown one is a user error listing those that exist."""
    from mlflow.exceptions import MlflowException

    found = []
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None and name.isdigit():
            try:
                experiment = client.get_experiment(name)
            except MlflowException:
                experiment = None
        if experiment is None:
            existing = sorted(e.name for e in client.search_experiments())
            raise cli.UserError(f"no MLflow experiment '{name}'; experiments: {', '.join(existing) or '(none)'}")
        found.append(experiment)
    return found


def read_runs(uri: str, experiment_ids: Sequence[str]) -> pd.DataFrame:
    """Every run of the experiments, one row each: ``params.*``, ``metrics.*`` (last logged value), ``tags.*``."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        runs = mlflow.search_runs(experiment_ids=list(experiment_ids), output_format="pandas")
    finally:
        mlflow.set_tracking_uri(previous)  # a caller in the same process keeps its own store
    if PARENT_TAG not in runs.columns:
        runs[PARENT_TAG] = np.nan
    return runs


def split_runs(runs: pd.DataFrame, parent_ids: Sequence[str] | None = None,
               experiment_names: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parents, trials). Parents are the top-level runs that have children (or those named by ``parent_ids``);
    trials are their children. Without any nested run, the top-level runs themselves are the trials."""
    runs = runs.copy()
    names = experiment_names or {}
    runs["experiment"] = runs["experiment_id"].map(lambda e: names.get(e, e))
    is_child = runs[PARENT_TAG].notna()
    top = runs[~is_child]
    if parent_ids:
        missing = [p for p in parent_ids if p not in set(top["run_id"])]
        if missing:
            choices = ", ".join(f"{r['run_id']} ({r.get('tags.mlflow.runName', '')})" for _, r in top.iterrows())
            raise cli.UserError(f"no parent run {', '.join(missing)} in these experiments; parent runs: "
                                f"{choices or '(none)'}")
        parents = top[top["run_id"].isin(parent_ids)]
    else:
        parents = top[top["run_id"].isin(set(runs.loc[is_child, PARENT_TAG]))]
    if parents.empty and not parent_ids:
        trials = top.copy()
        trials["sweep"] = trials.get("tags.mlflow.runName", trials["run_id"])
        return parents.reset_index(drop=True), trials.reset_index(drop=True)
    trials = runs[runs[PARENT_TAG].isin(set(parents["run_id"]))].copy()
    sweep_names = dict(zip(parents["run_id"], parents.get("tags.mlflow.runName", parents["run_id"]), strict=True))
    trials["sweep"] = trials[PARENT_TAG].map(sweep_names)
    return parents.reset_index(drop=True), trials.reset_index(drop=True)


def available(trials: pd.DataFrame, prefix: str) -> list[str]:
    """Names of the params or metrics some trial has (``prefix`` is ``params.`` or ``metrics.``)."""
    return sorted(c[len(prefix):] for c in trials.columns if c.startswith(prefix) and trials[c].notna().any())


def swept_keys(trials: pd.DataFrame) -> list[str]:
    """The keys the sweep varied, from the child runs' ``swept`` tag (``p_L=0.5,sd_schedule=linear,seed=0``), in
    order; without that tag (runs not written by our sweep), the params that differ between trials, by name."""
    keys: list[str] = []
    for swept in trials.get("tags.swept", pd.Series(dtype=object)).dropna():
        for key in re.findall(r"(?:^|,)([A-Za-z_][\w.\-]*)=", str(swept)):
            if key not in keys:
                keys.append(key)
    if keys:
        return keys
    # Sorted: the order of MLflow's params columns is not stable between reads.
    params = sorted(c for c in trials.columns if c.startswith("params."))
    return [c[len("params."):] for c in params if trials[c].astype(str).nunique(dropna=False) > 1]


def default_grouping(trials: pd.DataFrame) -> list[str]:
    """The swept keys without the seed (seeds are what a group folds); plus the experiment when several are read."""
    keys = [k for k in swept_keys(trials) if k != SEED]
    if trials["experiment"].nunique() > 1:
        keys = ["experiment", *keys]
    return keys


def check_names(trials: pd.DataFrame, metrics: Sequence[str], by: Sequence[str]) -> None:
    """A metric or grouping parameter that no trial has is a user error listing what does exist."""
    where = f"the {len(trials)} trial run(s) of {', '.join(sorted(trials['experiment'].astype(str).unique()))}"
    metric_names = available(trials, "metrics.")
    for metric in metrics:
        if metric not in metric_names:
            raise cli.UserError(f"no metric '{metric}' in {where}; metrics: {', '.join(metric_names) or '(none)'}")
    params = available(trials, "params.")
    for key in by:
        if key not in params and key not in EXTRA_KEYS:
            raise cli.UserError(f"no parameter '{key}' to group by in {where}; parameters: "
                                f"{', '.join([*params, *EXTRA_KEYS]) or '(none)'}")


def key_column(trials: pd.DataFrame, key: str) -> pd.Series:
    """A grouping key's values, as numbers when every value is one (so 0.2 < 1.0 sorts and plots as numbers)."""
    values = trials[EXTRA_KEYS[key]] if key in EXTRA_KEYS else trials[f"params.{key}"]
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() == values.notna().sum() and values.notna().any():
        return numeric
    return values.astype(object)


def metric_histories(client: Any, run_ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Every logged value of ``metric`` for the runs: columns run_id, step, timestamp, value."""
    from concurrent.futures import ThreadPoolExecutor

    def one(run_id: str) -> list[tuple[str, int, int, float]]:
        return [(run_id, m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, metric)]

    # One request per run: threads hide the round trips to a tracking server.
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [row for chunk in pool.map(one, run_ids) for row in chunk]
    return pd.DataFrame(rows, columns=["run_id", "step", "timestamp", "value"])


def final_values(trials: pd.DataFrame, metric: str, at: str = "last", mode: str = "min",
                 histories: pd.DataFrame | None = None) -> pd.Series:
    """The value of ``metric`` that stands for each trial (indexed like ``trials``): ``last`` is the last logged
    value (MLflow's latest: highest step), ``best`` the best over steps for ``mode``, a number the value at that
    step (NaN for a run that never reached it)."""
    if at == "last":
        return pd.to_numeric(trials[f"metrics.{metric}"], errors="coerce")
    if histories is None:
        raise ValueError("final_values needs the metric histories for at != 'last'")
    by_run = histories.groupby("run_id")["value"]
    if at == "best":
        per_run = by_run.min() if mode == "min" else by_run.max()
    else:
        step = int(at)
        per_run = histories[histories["step"] == step].sort_values("timestamp").groupby("run_id")["value"].last()
    return trials["run_id"].map(per_run).astype(float)


def trial_table(trials: pd.DataFrame, by: Sequence[str], values: pd.Series, value_name: str) -> pd.DataFrame:
    """One row per trial: run id and name, the grouping keys, the seed, the value that stands for the trial."""
    table = pd.DataFrame({
        "run_id": trials["run_id"],
        "run_name": trials.get("tags.mlflow.runName", trials["run_id"]),
        "sweep": trials["sweep"],
        "status": trials["status"],
        "start_time": trials["start_time"],
    })
    for key in by:
        table[key] = key_column(trials, key)
    if f"params.{SEED}" in trials.columns and SEED not in by:
        table[SEED] = pd.to_numeric(trials[f"params.{SEED}"], errors="coerce")
    table[value_name] = values.to_numpy()
    return table


# -------------------------------------------------------------------------------------------------------------
# Statistics
# -------------------------------------------------------------------------------------------------------------
def t_interval(mean: float, std: float, n: int, level: float = 1 - ALPHA) -> tuple[float, float]:
    """Student-t interval for the mean of n runs: mean ± t_{(1+level)/2, n-1} · s / sqrt(n); NaN for n < 2."""
    from scipy import stats

    if n < 2 or not np.isfinite(std):
        return (math.nan, math.nan)
    half = stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return (mean - half, mean + half)


def aggregate(table: pd.DataFrame, by: Sequence[str], value: str, mode: str) -> pd.DataFrame:
    """Groups of trials ranked best first: the keys, mean, std (n-1), n, ci_low, ci_high (95% t-interval)."""
    data = table.dropna(subset=[value])
    if by:
        grouped = data.groupby(list(by), dropna=False, sort=False)[value]
        stats_ = grouped.agg(mean="mean", std="std", n="count").reset_index()
    else:
        stats_ = pd.DataFrame({"mean": [data[value].mean()], "std": [data[value].std()], "n": [len(data)]})
    intervals = [t_interval(m, s, int(n)) for m, s, n in zip(stats_["mean"], stats_["std"], stats_["n"], strict=True)]
    stats_["ci_low"] = [lo for lo, _ in intervals]
    stats_["ci_high"] = [hi for _, hi in intervals]
    stats_["n"] = stats_["n"].astype(int)
    stats_ = stats_.sort_values("mean", ascending=mode == "min", kind="stable").reset_index(drop=True)
    stats_.insert(0, "rank", range(1, len(stats_) + 1))
    return stats_


def group_label(row: pd.Series | dict, by: Sequence[str]) -> str:
    return ", ".join(f"{key}={_fmt(row[key])}" for key in by) or "all runs"


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
    from scipy import stats

    if len(groups) < 2:
        return Verdict("Only one group: nothing to compare it with.")
    first, second = groups.iloc[0], groups.iloc[1]
    name1, name2 = group_label(first, by), group_label(second, by)
    a = group_values(table, by, first).dropna(subset=[value])
    b = group_values(table, by, second).dropna(subset=[value])
    diff = float(first["mean"] - second["mean"])
    better = f"the best is {_fmt(abs(diff))} {'lower' if mode == 'min' else 'higher'}" if diff else "equal means"
    head = (f"Best: {name1} with {value} {_fmt(first['mean'])} ± {_fmt(first['std'])} (n={int(first['n'])}); "
            f"runner-up: {name2} with {_fmt(second['mean'])} ± {_fmt(second['std'])} (n={int(second['n'])}); "
            f"{better}.")
    if len(a) < 2 or len(b) < 2:
        return Verdict(f"{head} Cannot tell it from seed noise: a group has a single run (run more seeds).",
                       difference=diff)
    with warnings.catch_warnings():  # nearly equal samples: scipy warns, and the p-value says the same
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a[value], b[value], equal_var=False)
        verdict = Verdict(head, difference=diff, welch_p=float(welch.pvalue))
        if SEED in a.columns and a[SEED].notna().all() and b[SEED].notna().all() \
                and a[SEED].is_unique and b[SEED].is_unique:
            joined = a.merge(b, on=SEED, suffixes=("_a", "_b"))
            verdict.pairs = len(joined)
            if len(joined) >= 2:
                verdict.paired_p = float(stats.ttest_rel(joined[f"{value}_a"], joined[f"{value}_b"]).pvalue)
    verdict.intervals_overlap = bool(first["ci_low"] <= second["ci_high"] and second["ci_low"] <= first["ci_high"])
    paired = verdict.pairs >= 2 and np.isfinite(verdict.paired_p)
    deciding = verdict.paired_p if paired else verdict.welch_p
    tests = f"Welch's t-test p={_fmt(verdict.welch_p)}"
    if verdict.pairs >= 2:
        tests = f"paired t-test over {verdict.pairs} seeds p={_fmt(verdict.paired_p)}; " + tests
    overlap = "overlap" if verdict.intervals_overlap else "do not overlap"
    if diff == 0:
        verdict.distinguishable = False
        verdict.text = f"{head} The two are tied: NOT distinguishable (the 95% intervals {overlap})."
        return verdict
    if not np.isfinite(deciding):
        verdict.text = (f"{head} The test is undefined (no spread over seeds in either group); the 95% intervals "
                        f"{overlap}.")
        return verdict
    verdict.distinguishable = bool(deciding < ALPHA)
    claim = ("It is distinguishable from seed noise at the 5% level" if verdict.distinguishable
             else "It is NOT distinguishable from seed noise at the 5% level")
    claim += ", decided by the paired test" if paired else ""
    verdict.text = f"{head} {claim} ({tests}; the 95% intervals {overlap})."
    return verdict


def pareto_front(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Mask of the points no other point dominates (at least as good in every objective, better in one)."""
    signed = np.asarray(points, dtype=float) * np.where(maximize, -1.0, 1.0)  # all objectives: lower is better
    front = np.ones(len(signed), dtype=bool)
    for i, p in enumerate(signed):
        dominated = np.all(signed <= p, axis=1) & np.any(signed < p, axis=1)
        front[i] = not dominated.any()
    return front


def parse_objectives(text: str, count: int | None = None) -> list[tuple[str, str]]:
    """``accuracy:max,latency_ms:min`` -> [("accuracy", "max"), ("latency_ms", "min")]."""
    objectives = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, mode = part.partition(":")
        mode = mode or default_mode(name)
        if mode not in ("min", "max") or not name:
            raise cli.UserError(f"'{part}' is not METRIC:min or METRIC:max")
        objectives.append((name, mode))
    if count is not None and len(objectives) != count:
        example = "accuracy:max,latency_ms:min" if count == 2 else "reward:max"
        raise cli.UserError(f"'{text}' names {len(objectives)} metric(s); give {count}, e.g. {example}")
    return objectives


def default_mode(metric: str) -> str:
    return "max" if any(word in metric.lower().split("_") or metric.lower().startswith(word)
                        for word in _MAX_WORDS) else "min"


def resolve_metric_and_mode(parents: pd.DataFrame, metric: str | None, mode: str | None) -> tuple[str, str, str]:
    """--metric/--mode, else the parents' ``metric``/``mode`` params, else the search space's mode, else the
    metric's name. Returns (metric, mode, where the mode came from)."""
    logged = [str(v) for v in parents.get("params.metric", pd.Series(dtype=object)).dropna().unique()]
    if metric is None:
        if len(logged) != 1:
            raise cli.UserError(f"the sweeps rank by different metrics ({', '.join(logged)}): give --metric" if logged
                                else "these runs do not say which metric to rank by: give --metric")
        metric = logged[0]
    if mode:
        return metric, mode, "--mode"
    if metric in logged:
        modes = parents.loc[parents.get("params.metric") == metric].get("params.mode", pd.Series(dtype=object))
        modes = modes.dropna().unique() if modes is not None else []
        if len(modes):
            return metric, str(modes[0]), "the sweep's params"
        for space_name in parents.get("params.space", pd.Series(dtype=object)).dropna().unique():
            try:
                from orchestrator import spaces

                space = spaces.load_space(str(space_name))
            except Exception:  # a space file renamed or from another checkout: fall back on the name
                continue
            if space.metric == metric:
                return metric, space.mode, f"search space '{space_name}'"
    return metric, default_mode(metric), "the metric's name"


# -------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# -------------------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(histories: pd.DataFrame, table: pd.DataFrame, groups: pd.DataFrame, by: Sequence[str],
                         metric: str, path: Path, top: int = 10) -> Path | None:
    """Per group (the ``top`` best): the mean over its runs at each step, with a ±1 std band over seeds."""
    if histories.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for _, row in groups.head(top).iterrows():
        members = group_values(table, by, row)["run_id"]
        curves = histories[histories["run_id"].isin(members)]
        curves = curves.sort_values("timestamp").groupby(["run_id", "step"])["value"].last().unstack("run_id")
        if curves.empty:
            continue
        mean, std = curves.mean(axis=1), curves.std(axis=1)
        label = f"#{int(row['rank'])} {group_label(row, by)} (n={curves.shape[1]})"
        (line,) = ax.plot(curves.index, mean, marker="o", markersize=3, label=label)
        if curves.shape[1] > 1:
            ax.fill_between(curves.index, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("step (epoch)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean over seeds, band ±1 std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_metric_vs_param(groups: pd.DataFrame, by: Sequence[str], x: str, metric: str, path: Path) -> Path | None:
    """``metric`` against one grouping key, one line per value of the other keys, error bars = 95% intervals."""
    plt = _pyplot()
    others = [k for k in by if k != x]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = groups.groupby(others, dropna=False, sort=True) if others else [((), groups)]
    for key, part in lines:
        part = part.sort_values(x)
        half = (part["ci_high"] - part["ci_low"]) / 2
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(others, key, strict=True)) or metric
        xs = part[x] if pd.api.types.is_numeric_dtype(part[x]) else part[x].astype(str)
        ax.errorbar(xs, part["mean"], yerr=half.fillna(0), marker="o", capsize=4, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.set_title(f"{metric} vs {x}; error bars: 95% t-interval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_pareto(points: pd.DataFrame, objectives: Sequence[tuple[str, str]], path: Path) -> Path:
    """Every trial in (second objective, first objective) space, the Pareto front drawn and ringed."""
    plt = _pyplot()
    (y, y_mode), (x, x_mode) = objectives
    front = points[points["pareto"]].sort_values(x)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.scatter(points[x], points[y], s=18, alpha=0.6, label=f"trials ({len(points)})")
    ax.step(front[x], front[y], where="post", color="C3", linewidth=1.5)
    ax.scatter(front[x], front[y], s=60, facecolors="none", edgecolors="C3", linewidths=1.5,
               label=f"Pareto front ({len(front)})")
    ax.set_xlabel(f"{x} ({x_mode} is better)")
    ax.set_ylabel(f"{y} ({y_mode} is better)")
    ax.set_title(f"{y} vs {x} with the Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reward(points: pd.DataFrame, reward: str, mode: str, path: Path) -> Path:
    """The reward of each trial in the order the trials started, its moving mean and the best so far."""
    plt = _pyplot()
    ordered = points.sort_values("start_time").reset_index(drop=True)
    trial = np.arange(1, len(ordered) + 1)
    window = min(len(ordered), max(3, len(ordered) // 10))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(trial, ordered[reward], s=14, alpha=0.6, label=f"{reward} per trial")
    ax.plot(trial, ordered[reward].rolling(window, min_periods=1).mean(), label=f"moving mean ({window} trials)")
    best = ordered[reward].cummax() if mode == "max" else ordered[reward].cummin()
    ax.plot(trial, best, drawstyle="steps-post", label="best so far")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(reward)
    ax.set_title(f"{reward} over trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# -------------------------------------------------------------------------------------------------------------
# Output: terminal, csv, markdown, html
# -------------------------------------------------------------------------------------------------------------
def display_table(groups: pd.DataFrame) -> pd.DataFrame:
    """The ranked groups as printed and exported: the interval as one column."""
    out = groups.drop(columns=["ci_low", "ci_high"]).copy()
    out["ci95"] = [f"[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else ""
                   for lo, hi in zip(groups["ci_low"], groups["ci_high"], strict=True)]
    return out


def print_groups(groups: pd.DataFrame, title: str, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = display_table(groups)
    table = Table()
    for column in shown.columns:
        table.add_column(str(column), justify="left" if shown[column].dtype == object else "right", no_wrap=True)
    for _, row in shown.head(top).iterrows():
        table.add_row(*(_fmt(v) for v in row))
    print(title, flush=True)  # plain: a long title wraps in the terminal rather than squeezed into the table
    console = Console(width=max(100, Console().width))
    console.print(table)
    if len(shown) > top:
        console.print(f"({len(shown) - top} more group(s); --top N shows more, --csv writes all)")


def to_markdown(table: pd.DataFrame) -> str:
    cells = [[_fmt(v).replace("|", "\\|") for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance(parents: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, parent in parents.iterrows():
        rows.append({
            "experiment": parent["experiment"],
            "sweep": parent.get("tags.mlflow.runName", ""),
            "run_id": parent["run_id"],
            "status": parent["status"],
            "started": str(parent["start_time"])[:19],
            "trials": int((trials[PARENT_TAG] == parent["run_id"]).sum()),
            "git commit": parent.get("tags.mlflow.source.git.commit", ""),
            "command": parent.get("tags.command", ""),
        })
    return pd.DataFrame(rows)


def write_html(path: Path, *, title: str, intro: Sequence[str], verdict: Verdict, groups: pd.DataFrame,
               plots: Sequence[Path], provenance: pd.DataFrame, extra_tables: dict[str, pd.DataFrame],
               trials: pd.DataFrame) -> Path:
    """One HTML file with everything inline (images as data: URIs). Its Content-Security-Policy forbids every
    outside resource, so a page that renders at all renders offline."""
    images = []
    for plot in plots:
        data = base64.b64encode(Path(plot).read_bytes()).decode()
        images.append(f'<figure><img alt="{html.escape(plot.stem)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(plot.stem.replace('_', ' '))}</figcaption></figure>")
    extra = "".join(f"<h2>{html.escape(name)}</h2>{_html_table(t)}" for name, t in extra_tables.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }} tbody tr:first-child {{ background: #eef7ee; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.verdict {{ padding: 0.8em; background: #f7f7e8; border-left: 4px solid #cc4; }}
code, .mono {{ font-family: ui-monospace, monospace; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(f"<p>{html.escape(line)}</p>" for line in intro)}
<p class="verdict">{html.escape(verdict.text)}</p>
<h2>Ranked groups</h2>{_html_table(display_table(groups))}
<h2>Plots</h2>{"".join(images) or "<p>(no plots)</p>"}
{extra}
<h2>Sweeps (parent runs): commands and commits</h2>{_html_table(provenance)}
<details><summary>All {len(trials)} trial runs</summary>{_html_table(trials)}</details>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def log_to_parents(client: Any, parent_ids: Sequence[str], files: Sequence[Path]) -> None:
    for run_id in parent_ids:
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path="compare")


def serve(uri: str, host: str, port: int) -> int:
    """Become ``mlflow ui`` on the same store (same pid, so Ctrl-C or a kill stops it whole). A tracking server
    already is a UI: just say where."""
    if uri.startswith(("http://", "https://")):
        print(f"the runs are served by {uri}: open it in a browser")
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    print(f"MLflow UI on http://{host}:{port} (Ctrl-C stops it): {shlex.join(command[2:])}", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


# -------------------------------------------------------------------------------------------------------------
# CLI
# -------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.compare",
        description="Compare the trials of MLflow experiments (sweeps and searches): groups over seeds, ranking, "
        "a test of the winner against the runner-up, tables, plots and an HTML report.",
    )
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="MLflow experiment names or ids")
    parser.add_argument("--runs", nargs="+", metavar="PARENT_RUN_ID", help="only these sweeps (parent run ids)")
    parser.add_argument("--by", help="comma-separated grouping params (default: the swept keys minus seed); "
                        "'experiment' and 'sweep' group by those")
    parser.add_argument("--metric", help="metric to rank by (default: the sweep's metric)")
    parser.add_argument("--mode", choices=["min", "max"], help="min or max is best (default: the sweep's)")
    parser.add_argument("--at", default="last",
                        help="which value stands for a run: last (default), best (over steps) or a step number")
    parser.add_argument("--x", help="the parameter on the x axis of the metric-vs-parameter plot "
                        "(default: the first numeric grouping key)")
    parser.add_argument("--pareto", metavar="Y:MODE,X:MODE",
                        help="Pareto front of two metrics, e.g. accuracy:max,latency_ms:min (Y drawn over X)")
    parser.add_argument("--reward", metavar="METRIC[:MODE]", help="plot this metric over trials, e.g. reward:max")
    parser.add_argument("--top", type=int, default=20, help="groups shown in the terminal (default 20)")
    parser.add_argument("--curves", type=int, default=10, help="best groups drawn as learning curves (default 10)")
    parser.add_argument("--csv", type=Path, help="write the ranked groups as CSV")
    parser.add_argument("--markdown", type=Path, help="write the ranked groups as a Markdown table")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report")
    parser.add_argument("--log", action="store_true", help="log plots and tables to the parent runs (compare/)")
    parser.add_argument("--serve", action="store_true", help="then start the MLflow UI on the same store")
    parser.add_argument("--host", default="127.0.0.1", help="--serve host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="--serve port (default 5000)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db in the working directory)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.at not in ("last", "best") and not args.at.lstrip("-").isdigit():
        raise cli.UserError(f"--at {args.at}: give last, best or a step number")
    pareto = parse_objectives(args.pareto, 2) if args.pareto else None
    reward = parse_objectives(args.reward, 1)[0] if args.reward else None
    if not args.experiments and not args.runs:
        if args.serve:
            return serve(open_store(args.tracking_uri), args.host, args.port)
        raise cli.UserError("name an experiment (or --runs PARENT_RUN_ID, or --serve alone for the MLflow UI)")

    # 1. Read. Everything below is checked before anything is written anywhere.
    from mlflow.tracking import MlflowClient

    uri = open_store(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    if args.experiments:
        experiments = resolve_experiments(client, args.experiments)
    else:
        experiments = [client.get_experiment(_parent_experiment(client, run_id)) for run_id in args.runs]
    experiments = list({e.experiment_id: e for e in experiments}.values())
    names = {e.experiment_id: e.name for e in experiments}
    parents, trials = split_runs(read_runs(uri, list(names)), args.runs, names)
    if trials.empty:
        raise cli.UserError(f"no trial runs in {', '.join(names.values())}")
    metric, mode, mode_from = resolve_metric_and_mode(parents, args.metric, args.mode)
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by is not None else default_grouping(trials)
    extra_metrics = [name for name, _ in (pareto or [])] + ([reward[0]] if reward else [])
    check_names(trials, [metric, *extra_metrics], by)
    if args.x and args.x not in by:
        raise cli.UserError(f"--x {args.x} is not a grouping key; grouping keys: {', '.join(by) or '(none)'}")

    # Unfinished trials stand for nothing yet; a FAILED one may have stopped anywhere.
    finished = trials[trials["status"] == "FINISHED"]
    notes = []
    if len(finished) < len(trials):
        counts = trials.loc[trials["status"] != "FINISHED", "status"].value_counts()
        notes.append(f"left out {len(trials) - len(finished)} unfinished trial(s) "
                     f"({', '.join(f'{n} {s}' for s, n in counts.items())})")
    trials = finished.reset_index(drop=True)
    if trials.empty:
        raise cli.UserError("no FINISHED trial runs to compare")

    want_plots = bool(args.plots or args.html or args.log)
    histories = pd.DataFrame(columns=["run_id", "step", "timestamp", "value"])
    if want_plots or args.at != "last":
        histories = metric_histories(client, list(trials["run_id"]), metric)
    value_name = metric if args.at == "last" else f"{metric}@{args.at}"
    values = final_values(trials, metric, args.at, mode, histories)
    table = trial_table(trials, by, values, value_name)
    if table[value_name].isna().any():
        notes.append(f"{int(table[value_name].isna().sum())} trial(s) have no {value_name} and are left out")
    varying = _varying_fixed_params(trials, by)
    if varying:
        notes.append(f"these params also differ between the runs but are not grouped by: {', '.join(varying)} "
                     "(add them to --by, or pick sweeps with --runs)")
    groups = aggregate(table, by, value_name, mode)
    if groups.empty:
        raise cli.UserError(f"no trial has a value for {value_name}")
    verdict = top_two_verdict(table, groups, by, value_name, mode)

    # 2. Terminal.
    where = ", ".join(names.values())
    title = (f"{value_name} over seeds by {', '.join(by) or '(no grouping)'}; {mode} is best ({mode_from}); "
             f"{len(table)} trials of {where}")
    for note in notes:
        print(f"note: {note}")
    print_groups(groups, title, args.top)
    print(verdict.text)

    extra_tables: dict[str, pd.DataFrame] = {}
    points = None
    if pareto or reward:
        points = table.copy()
        for name, _ in [*(pareto or []), *([reward] if reward else [])]:
            points[name] = final_values(trials, name)
        if pareto:
            names_ = [n for n, _ in pareto]
            points = points.dropna(subset=names_)
            points["pareto"] = pareto_front(points[names_].to_numpy(), [m == "max" for _, m in pareto])
            front = points[points["pareto"]].sort_values(names_[0], ascending=pareto[0][1] == "min")
            extra_tables["Pareto front"] = front[["run_name", *by, *names_]]
            print(f"Pareto front ({pareto[0][0]} {pareto[0][1]}, {pareto[1][0]} {pareto[1][1]}): "
                  f"{len(front)} of {len(points)} trials")
            print(to_markdown(extra_tables["Pareto front"]), end="")

    # 3. Files.
    outputs: list[Path] = []
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        groups.to_csv(args.csv, index=False)
        outputs.append(args.csv)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"{title}\n\n{to_markdown(display_table(groups))}\n{verdict.text}\n")
        outputs.append(args.markdown)
    with tempfile.TemporaryDirectory() as tmp:
        plot_dir = args.plots or Path(tmp)
        plots: list[Path] = []
        if want_plots:
            curve = plot_learning_curves(histories, table, groups, by, metric, plot_dir / "learning_curves.png",
                                         args.curves)
            plots += [curve] if curve else []
            # Against a categorical key (say one value per architecture) a line means nothing: only when asked.
            x = args.x or next((k for k in by if pd.api.types.is_numeric_dtype(groups[k])), None)
            if x is not None and len(groups) > 1:
                plots.append(plot_metric_vs_param(groups, by, x, value_name, plot_dir / f"{metric}_vs_{x}.png"))
            if pareto and points is not None:
                plots.append(plot_pareto(points, pareto, plot_dir / "pareto.png"))
            if reward and points is not None:
                plots.append(plot_reward(points.dropna(subset=[reward[0]]), *reward, plot_dir / "reward.png"))
            if args.plots:
                outputs += plots
        if args.html:
            intro = [f"Tracking store: {uri}",
                     "Command: python -m orchestrator.compare " + shlex.join(sys.argv[1:] if argv is None else argv),
                     f"Generated {dt.datetime.now().isoformat(timespec='seconds')}.", *(f"Note: {n}" for n in notes),
                     title]
            write_html(args.html, title=f"Comparison of {where}", intro=intro, verdict=verdict, groups=groups,
                       plots=plots, provenance=_provenance(parents, trials), extra_tables=extra_tables,
                       trials=table.drop(columns=["start_time"]))
            outputs.append(args.html)
        if args.log:
            if parents.empty:
                print("note: these runs have no parent run; nothing logged")
            else:
                logged = list(plots)
                if not args.csv:
                    logged.append(Path(tmp) / "groups.csv")
                    groups.to_csv(logged[-1], index=False)
                logged += [p for p in outputs if p not in plots]
                log_to_parents(client, list(parents["run_id"]), logged)
                print(f"logged {len(logged)} file(s) to {len(parents)} parent run(s) under compare/")
    for output in outputs:
        print(f"wrote {output}")
    if args.serve:
        return serve(uri, args.host, args.port)
    return 0


def _parent_experiment(client: Any, run_id: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.experiment_id
    except MlflowException:
        raise cli.UserError(f"no run {run_id} in {client.tracking_uri}") from None


def _varying_fixed_params(trials: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """Params that differ between the runs besides the grouping keys and the seed: a sign that two different
    sweeps (say depth 20 and depth 110) are being folded together."""
    out = []
    for column in (c for c in trials.columns if c.startswith("params.")):
        key = column[len("params."):]
        if key in by or key == SEED or key in ("metric", "space"):
            continue
        if trials[column].astype(str).nunique(dropna=False) > 1:
            out.append(key)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
