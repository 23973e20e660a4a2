"""The plots (matplotlib, Agg): learning curves with a band over seeds, the metric against a grouping key with 95%
intervals, the Pareto front of two metrics, and a metric over trials (an architecture search's reward)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.compare.ranking import group_label, group_values
from orchestrator.tables import fmt_number


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
        label = ", ".join(f"{k}={fmt_number(v)}" for k, v in zip(others, key, strict=True)) or metric
        xs = part[x] if pd.api.types.is_numeric_dtype(part[x]) else part[x].astype(str)
        ax.errorbar(xs, part["mean"], yerr=half.fillna(0), marker="o", capsize=4, label=label)
    values = pd.to_numeric(groups[x], errors="coerce")
    if values.notna().all() and (values > 0).all() and values.max() >= 100 * values.min():
        ax.set_xscale("log")  # rates, weight decays, sizes: decades apart, as they are swept
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
