"""Mean and std over seeds of one repro experiment, read back from MLflow: ``python repro/summarize.py EXP --by KEY..``.

The sweep's own "over seeds" table shows the sweep's metric only; the claims need the training loss and the test
error side by side, and the stochastic-depth repro runs two sweeps into one experiment. Finished child runs only.
``--curve X1 X2 ..`` reads the ``--metrics`` as one curve per config at those x values (FMP: test error after N
averaged passes) and ``--plot PATH`` draws it, mean ± std over seeds with every seed's own line (paired).
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


def key_column(runs: pd.DataFrame, key: str) -> str:
    """The column of a ``--by`` key: a config key (``params.*``), else a run tag such as ``trainable``."""
    for column in (f"params.{key}", f"tags.{key}"):
        if column in runs:
            return column
    raise SystemExit(f"error: {key!r} is neither a config key nor a tag of the experiment's trials")


def summarize(experiment: str, by: list[str], tracking_uri: str, metrics: list[str]) -> pd.DataFrame:
    """One row per config: each metric's mean and std over seeds (``orchestrator.stats``), seeds, epochs."""
    runs = finished_trials(experiment, tracking_uri)
    keys = [key_column(runs, k) for k in by]
    groups = runs.groupby(keys, sort=True)
    table = groups.size().reset_index()[keys]
    for metric in metrics:
        if f"metrics.{metric}" not in runs:  # e.g. params in runs recorded before classifiers reported it
            runs[f"metrics.{metric}"] = float("nan")
        summary = stats.group_summary(runs, keys, f"metrics.{metric}")[[*keys, "mean", "std"]]
        table = table.merge(summary.rename(columns={"mean": f"{metric} mean", "std": f"{metric} std"}), on=keys,
                            how="left")
    table["seeds"] = groups.size().to_numpy()
    if "params.epochs" in runs:  # Deep Compression counts its budget in base/retrain/fine-tune epochs instead
        table["epochs"] = groups["params.epochs"].first().to_numpy()
    return table.rename(columns=dict(zip(keys, by, strict=True)))


def paired_by(runs: pd.DataFrame, by: list[str], key: str, metric: str) -> str:
    """The two values of ``key`` compared on matched trials: same seed and same other ``by`` keys (e.g. overlapping
    vs disjoint FMP at each kind, alpha and seed): the mean difference, wins and the paired t-test; and, without the
    matching, Welch's t-test of all trials of one value against all of the other (what the RESULTS tables quote)."""
    others = [f"params.{k}" for k in by if k != key] + ["params.seed"]
    levels = sorted(runs[f"params.{key}"].dropna().unique())
    if len(levels) != 2:
        raise SystemExit(f"error: --pair-by {key} needs exactly two values, the experiment has {levels}")
    a, b = levels
    pivot = runs.pivot_table(index=others, columns=f"params.{key}", values=f"metrics.{metric}").dropna()
    diff = pivot[b] - pivot[a]
    mean, std, n = stats.summarize(diff)
    p = stats.paired_p(pivot[b], pivot[a])
    column = runs[f"params.{key}"]
    welch = stats.welch_p(runs.loc[column == b, f"metrics.{metric}"].dropna(),
                          runs.loc[column == a, f"metrics.{metric}"].dropna())
    return (f"{metric}, {key}={b} minus {key}={a} over {n} matched trials: {fmt_number(mean)} ± {fmt_number(std)}; "
            f"{key}={b} lower in {int((diff < 0).sum())} of {n}; paired t-test p={fmt_number(p)}; "
            f"Welch t-test p={fmt_number(welch)}")


def plot_curve(experiment: str, by: list[str], tracking_uri: str, metrics: list[str], xs: list[float],
               path: str, xlabel: str) -> None:
    """Each config's ``metrics`` at ``xs``: every seed's line (thin) and the mean ± std over seeds (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = finished_trials(experiment, tracking_uri)
    fig, ax = plt.subplots(figsize=(6, 4))
    for config, group in runs.groupby([f"params.{k}" for k in by], sort=True):
        values = group[[f"metrics.{m}" for m in metrics]].to_numpy(dtype=float)
        label = ", ".join(f"{k}={v}" for k, v in zip(by, config, strict=True))
        line = ax.errorbar(xs, values.mean(0), yerr=values.std(0, ddof=1) if len(values) > 1 else None,
                           marker="o", capsize=3, label=f"{label} (mean ± std, {len(values)} seeds)")
        for seed_values in values:
            ax.plot(xs, seed_values, color=line[0].get_color(), alpha=0.3, linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metrics[0])
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.legend(fontsize=8)
    ax.set_title(experiment, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--by", nargs="+", required=True, help="config keys that tell the compared configs apart")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help=f"metrics to average (default {METRICS})")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"),
                        help="also list metrics A and B of every trial (two scores of the same run) and B - A")
    parser.add_argument("--pair-by", metavar="KEY",
                        help="compare KEY's two values on trials matched by seed and the other --by keys")
    parser.add_argument("--within", metavar="KEY", help="with --pair-by: one comparison per value of KEY")
    parser.add_argument("--curve", nargs="+", type=float, metavar="X",
                        help="x values of the --metrics, read as one curve per config (e.g. N of averaged passes)")
    parser.add_argument("--curve-label", default="x", help="the curve's x axis label")
    parser.add_argument("--plot", help="with --curve: write the curve to this PNG")
    args = parser.parse_args()
    if args.curve and len(args.curve) != len(args.metrics):
        parser.error(f"--curve gives {len(args.curve)} x values for {len(args.metrics)} --metrics")
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
    if args.pair_by:
        runs = finished_trials(args.experiment, args.tracking_uri)
        parts = runs.groupby(f"params.{args.within}", sort=True) if args.within else [(None, runs)]
        for level, part in parts:
            print(f"\npaired by {args.pair_by}" + (f", {args.within}={level}:" if args.within else ":"))
            for metric in args.metrics:
                print("  " + paired_by(part, args.by, args.pair_by, metric))
    if args.curve and args.plot:
        plot_curve(args.experiment, args.by, args.tracking_uri, args.metrics, args.curve, args.plot,
                   args.curve_label)


if __name__ == "__main__":
    main()
