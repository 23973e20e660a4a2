"""Reading MLflow into pandas: the store, the experiments, the runs (parents and their trials), the grouping keys,
the metric histories, and the one-row-per-trial table everything else works on."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator import cli, tracking

PARENT_TAG = "tags.mlflow.parentRunId"
TRAINABLE_TAG = "tags.trainable"
SEED = "seed"
# Pseudo-parameters --by accepts besides the runs' own params.
EXTRA_KEYS = {"experiment": "experiment", "sweep": "sweep"}
HISTORY_COLUMNS = ["run_id", "step", "timestamp", "value"]


def open_store(cli_uri: str | None) -> str:
    """The tracking URI (project rules), checked: a server must answer, a sqlite file must already exist
    (comparing must never create an empty store)."""
    uri = tracking.resolve_tracking_uri(cli_uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise cli.UserError(f"no MLflow store at {path} (run a sweep here first, or give --tracking-uri / "
                                "MLFLOW_TRACKING_URI)")
        check_sqlite_header(path)
    else:
        tracking.check_reachable(uri)
    return uri


# The first 16 bytes of every SQLite 3 database file (https://www.sqlite.org/fileformat.html, section 1.3.1).
SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_header(path: Path) -> None:
    """One line naming ``path`` when it is not an SQLite database (16 bytes read). An empty file would be silently
    turned into a fresh store by MLflow, so it is refused too."""
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        what = "an empty file" if not head else "not an SQLite database"
        raise cli.UserError(f"corrupt MLflow store {path}: {what} (give --tracking-uri for another store)")


@contextlib.contextmanager
def store_errors(cli_uri: str | None) -> Iterator[None]:
    """Turn a store that breaks while it is read (a database whose header is intact but whose pages are not, a
    locked or half-written file) into one line naming it, instead of SQLAlchemy's traceback. The report needs every
    run of the store, so this is an error, not a note: there is no "rest" to render without the store."""
    from sqlalchemy.exc import DatabaseError

    try:
        yield
    except DatabaseError as err:
        where = tracking.resolve_tracking_uri(cli_uri).removeprefix("sqlite:///")
        reason = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise cli.UserError(f"cannot read the MLflow store {where}: {reason}") from None


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


def parent_experiment(client: Any, run_id: str) -> str:
    """The experiment id of run ``run_id``; a user error if the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.experiment_id
    except MlflowException:
        raise cli.UserError(f"no run {run_id} in {client.tracking_uri}") from None


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


def trainable_names(parents: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """The trainables the trials ran (their ``trainable`` tag, else their parents'), sorted; [] when untagged."""
    for frame in (trials, parents):
        if TRAINABLE_TAG in frame.columns:
            found = sorted({str(v) for v in frame[TRAINABLE_TAG].dropna() if str(v)})
            if found:
                return found
    return []


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


def varying_fixed_params(trials: pd.DataFrame, by: Sequence[str]) -> list[str]:
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
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def trial_table(trials: pd.DataFrame, by: Sequence[str], values: pd.Series, value_name: str,
                steps: pd.Series | None = None) -> pd.DataFrame:
    """One row per trial: run id and name, the grouping keys, the seed, the value that stands for the trial and,
    when one was selected, the step (epoch) it was taken at."""
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
    if steps is not None:
        table["step"] = steps.to_numpy(dtype=float)  # NaN: the run never logged the selected step
    return table
