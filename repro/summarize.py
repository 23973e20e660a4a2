"""Mean and std over seeds of one repro experiment, read back from MLflow: ``python repro/summarize.py EXP --by KEY..``.

The sweep's own "over seeds" table shows the sweep's metric only; the claims need the training loss and the test
error side by side, and the stochastic-depth repro runs two sweeps into one experiment. Finished child runs only.
"""

from __future__ import annotations

import argparse
import os

import mlflow
import pandas as pd

from orchestrator import stats
from orchestrator.tables import fmt_number, markdown_table

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
    """One row per config: each metric's mean and std over seeds (``orchestrator.stats``), seeds, epochs."""
    runs = finished_trials(experiment, tracking_uri)
    keys = [f"params.{k}" for k in by]
    groups = runs.groupby(keys, sort=True)
    table = groups.size().reset_index()[keys]
    for metric in metrics:
        summary = stats.group_summary(runs, keys, f"metrics.{metric}")[[*keys, "mean", "std"]]
        table = table.merge(summary.rename(columns={"mean": f"{metric} mean", "std": f"{metric} std"}), on=keys,
                            how="left")
    table["seeds"] = groups.size().to_numpy()
    table["epochs"] = groups["params.epochs"].first().to_numpy()
    return table.rename(columns=dict(zip(keys, by, strict=True)))


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
    print(f"\n{args.experiment}: mean and std over seeds (finished trials)\n")
    print(markdown_table(table))
    if args.paired:
        a, b = args.paired
        runs = finished_trials(args.experiment, args.tracking_uri).sort_values("params.seed")
        pairs = pd.DataFrame({"seed": runs["params.seed"], a: runs[f"metrics.{a}"], b: runs[f"metrics.{b}"]})
        pairs[f"{b} - {a}"] = pairs[b] - pairs[a]
        mean, std, n = stats.summarize(pairs[f"{b} - {a}"])
        low, high = stats.t_interval(pairs[f"{b} - {a}"])
        print(f"\npaired, per trial ({int((pairs[f'{b} - {a}'] < 0).sum())} of {n} with {b} < {a}; mean difference "
              f"{fmt_number(mean)} ± {fmt_number(std)}, 95% t-interval [{fmt_number(low)}, {fmt_number(high)}], "
              f"paired t-test p={fmt_number(stats.paired_p(pairs[b], pairs[a]))}):\n")
        print(markdown_table(pairs))


if __name__ == "__main__":
    main()
