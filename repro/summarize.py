"""Mean and std over seeds of one repro experiment, read back from MLflow: ``python repro/summarize.py EXP --by KEY..``.

The sweep's own "over seeds" table shows the sweep's metric only; the claims need the training loss and the test
error side by side, and the stochastic-depth repro runs two sweeps into one experiment. Finished child runs only.
"""

from __future__ import annotations

import argparse
import os

import mlflow
import pandas as pd

METRICS = ("train_loss", "train_error", "val_error", "test_error")


def finished_trials(experiment: str, tracking_uri: str) -> pd.DataFrame:
    """The experiment's finished child (trial) runs, one row each."""
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if "tags.mlflow.parentRunId" not in runs:
        raise SystemExit(f"error: no trial runs in MLflow experiment {experiment!r} at {tracking_uri}")
    runs = runs[runs["tags.mlflow.parentRunId"].notna() & (runs["status"] == "FINISHED")]
    if runs.empty:
        raise SystemExit(f"error: no finished trial runs in MLflow experiment {experiment!r}")
    return runs


def summarize(experiment: str, by: list[str], tracking_uri: str, metrics: list[str]) -> pd.DataFrame:
    runs = finished_trials(experiment, tracking_uri)
    groups = runs.groupby([f"params.{k}" for k in by])
    table = groups[[f"metrics.{m}" for m in metrics]].agg(["mean", "std"])
    table.columns = [f"{m.removeprefix('metrics.')} {stat}" for m, stat in table.columns]
    table["seeds"] = groups.size()
    table["epochs"] = groups["params.epochs"].first()
    table.index.names = by
    return table.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--by", nargs="+", required=True, help="config keys that tell the compared configs apart")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help=f"metrics to average (default {METRICS})")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"),
                        help="also list metrics A and B of every trial (two scores of the same run) and B - A")
    args = parser.parse_args()
    table = summarize(args.experiment, args.by, args.tracking_uri, args.metrics)
    print(f"\n{args.experiment}: mean and std over seeds (finished trials)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.paired:
        a, b = args.paired
        runs = finished_trials(args.experiment, args.tracking_uri).sort_values("params.seed")
        pairs = pd.DataFrame({"seed": runs["params.seed"], a: runs[f"metrics.{a}"], b: runs[f"metrics.{b}"]})
        pairs[f"{b} - {a}"] = pairs[b] - pairs[a]
        diff = pairs[f"{b} - {a}"]
        print(f"\npaired, per trial ({(diff < 0).sum()} of {len(diff)} with {b} < {a}; "
              f"mean difference {diff.mean():.4f} ± {diff.std():.4f}):")
        print(pairs.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
