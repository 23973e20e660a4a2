"""Which value stands for a trial: its last logged value, its value at a given step, or its value at the step where
the selection metric (the trainable's primary, a validation metric) was best. Selection looks only at the selection
metric, so a test metric is reported at the epoch that validation chose, never at its own best epoch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def is_test_metric(metric: str) -> bool:
    """A metric on the test split (``test_error``, ``test-acc``): never used to choose an epoch."""
    return metric.lower().startswith("test")


def _latest_per_step(histories: pd.DataFrame) -> pd.Series:
    """(run_id, step) -> value; a step logged twice (a resumed trial re-reports it) keeps its latest value."""
    return histories.sort_values("timestamp", kind="stable").groupby(["run_id", "step"])["value"].last()


def best_steps(histories: pd.DataFrame, mode: str) -> pd.Series:
    """run_id -> the step where the history's metric is best for ``mode`` (the earliest such step on a tie, as
    early stopping would keep it)."""
    latest = _latest_per_step(histories).dropna().reset_index()
    if latest.empty:
        return pd.Series(dtype=float)
    ordered = latest.sort_values(["run_id", "value", "step"], ascending=[True, mode == "min", True], kind="stable")
    return ordered.groupby("run_id")["step"].first()


def selected_steps(run_ids: Sequence[str], at: str, select_histories: pd.DataFrame | None = None,
                   select_mode: str = "min") -> pd.Series:
    """run_id -> the step that stands for each run: ``best`` the best step of the selection metric's history,
    a number that step for every run. NaN for a run without a value to select by."""
    index = pd.Index(list(run_ids), name="run_id")
    if at == "best":
        if select_histories is None:
            raise ValueError("selected_steps needs the selection metric's histories for at='best'")
        return best_steps(select_histories, select_mode).reindex(index).astype(float)
    return pd.Series(float(int(at)), index=index)


def values_at(histories: pd.DataFrame, steps: pd.Series) -> pd.Series:
    """run_id -> the metric's value at ``steps[run_id]``; NaN where the run did not log it at that step."""
    latest = _latest_per_step(histories)
    keys = [(run, int(step)) for run, step in steps.items() if np.isfinite(step)]
    found = latest.reindex(pd.MultiIndex.from_tuples(keys, names=["run_id", "step"])) if keys else latest.iloc[:0]
    return pd.Series(found.to_numpy(dtype=float), index=[run for run, _ in keys], dtype=float).reindex(steps.index)


def final_values(trials: pd.DataFrame, metric: str, at: str = "last", histories: pd.DataFrame | None = None,
                 steps: pd.Series | None = None) -> pd.Series:
    """The value of ``metric`` that stands for each trial (indexed like ``trials``): ``last`` is the last logged
    value (MLflow's latest: highest step); otherwise the value at each run's step in ``steps`` (from
    :func:`selected_steps`), taken from the metric's ``histories``."""
    if at == "last":
        return pd.to_numeric(trials[f"metrics.{metric}"], errors="coerce")
    if histories is None or steps is None:
        raise ValueError("final_values needs the metric's histories and the selected steps for at != 'last'")
    return trials["run_id"].map(values_at(histories, steps)).astype(float)
