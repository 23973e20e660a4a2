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


def summarize(experiment: str, by: list[str], tracking_uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if "tags.mlflow.parentRunId" not in runs:
        raise SystemExit(f"error: no trial runs in MLflow experiment {experiment!r} at {tracking_uri}")
    runs = runs[runs["tags.mlflow.parentRunId"].notna() & (runs["status"] == "FINISHED")]
    if runs.empty:
        raise SystemExit(f"error: no finished trial runs in MLflow experiment {experiment!r}")
    groups = runs.groupby([f"params.{k}" for k in by])
    table = groups[[f"metrics.{m}" for m in METRICS]].agg(["mean", "std"])
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
    args = parser.parse_args()
    table = summarize(args.experiment, args.by, args.tracking_uri)
    print(f"\n{args.experiment}: mean and std over seeds (finished trials)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
