"""``python -m orchestrator.sweep SPACE``: a Ray Tune sweep over a search space, every trial tracked in MLflow.

Examples::

    python -m orchestrator.sweep --list
    python -m orchestrator.sweep sd_rates                         # embedded local Ray, ./mlflow.db
    python -m orchestrator.sweep sd_rates --set depth=110 epochs=50 --seeds 3 --scheduler asha
    python -m orchestrator.sweep sd_rates --resume                # continue the latest interrupted sd_rates sweep
    python -m orchestrator.sweep sd_rates --address auto --storage s3://bucket/ray_results --gpus-per-trial 1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, executor, runner, spaces, stats, tracking
from orchestrator.tables import fmt_number
from trainables import registry


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Run a Ray Tune sweep over a search space (search_spaces/NAME.yaml or a path); "
        "every trial is a nested MLflow run.",
    )
    parser.add_argument("space", nargs="?", help="search space name or YAML path")
    parser.add_argument("--list", action="store_true", help="list registered trainables and search spaces")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (split over workers)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial, split over workers; fractions pack trials per GPU (0.5: two)")
    parser.add_argument("--workers", type=int, default=1, help="DDP workers per trial (> 1 runs a Ray Train group)")
    add_run_arguments(parser)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every Tune-running command shares (``orchestrator.sweep`` and ``orchestrator.rl``)."""
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values (pins a searched key), e.g. --set epochs=2 depth=20")
    parser.add_argument("--seeds", type=int, help="repeats of every config with seeds 0..N-1 (default: the space's)")
    parser.add_argument("--samples", type=int, help="Tune num_samples for sampled primitives (default: the space's)")
    parser.add_argument("--scheduler", choices=spaces.SCHEDULERS, help="trial scheduler (default: the space's)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="max trials at once (0: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=executor.DEFAULT_MAX_FAILURES,
                        help="retries of a failed trial, each from its last checkpoint (default "
                        f"{executor.DEFAULT_MAX_FAILURES}: a trial process killed from outside, by the OOM killer or "
                        "a lost node, is usually not the trial's fault; 0 fails a trial at its first error)")
    parser.add_argument("--address", help="join a running Ray cluster (e.g. auto, ray://host:10001); "
                        "default: RAY_ADDRESS or an embedded local Ray")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded local Ray (default: all)")
    parser.add_argument("--storage", help="Tune storage path (default ./ray_results; a cluster needs s3:// or NFS)")
    parser.add_argument("--name", help="experiment name (default SPACE-YYYYmmdd-HHMMSS); with --resume: which one")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (latest, or --name)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--experiment", help="MLflow experiment name (default: the space's name)")
    parser.add_argument("--top", type=int, default=10, help="rows of the final table")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print_catalogue()
        return 0
    if not args.space:
        raise cli.UserError("name a search space (python -m orchestrator.sweep --list shows them)")
    argv = list(sys.argv[1:] if argv is None else argv)
    return executor.execute(args, argv, parse=build_parser().parse_args, plan=lambda a: plan(a, load_sweep_space),
                            prog="python -m orchestrator.sweep", label=args.space)


def plan(args: argparse.Namespace, load: Callable[[argparse.Namespace], spaces.SweepSpace]) -> executor.Plan:
    """The sweep that ``load(args)`` describes (a space file, or ``orchestrator.rl``'s one-trial space), validated."""
    space = load(args)
    spec = registry.get(space.trainable)
    base_config = space.validate(spec)
    resources = runner.TrialResources(num_workers=args.workers, cpus=args.cpus_per_trial, gpus=args.gpus_per_trial)
    if args.max_failures < 0:
        raise cli.UserError(f"--max-failures must be >= 0, got {args.max_failures}")

    def setup(tracker: tracking.SweepTracker, folder: str) -> executor.TuneSetup:
        from ray import tune

        tags = {"trainable": spec.name, "search_space": space.name}
        commit = tracking.git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        return executor.TuneSetup(
            param_space=space.param_space(base_config),
            tune_config=tune.TuneConfig(
                metric=space.metric, mode=space.mode, num_samples=space.tune_samples(), search_alg=space.search_alg(),
                max_concurrent_trials=args.max_concurrent or None, scheduler=make_scheduler(space, base_config, spec),
                # A trial process is reused by the next trial of the same resources: saves the ~2 s start of a
                # fresh process (and its torch import) per trial; bench/trial_overhead.py measures it.
                reuse_actors=True,
            ),
            callback=tracking.MlflowTrialCallback(tracker, tags=tags, swept_keys=space.swept_keys()),
        )

    headline = f"sweep '{space.name}': {space.num_trials()} trial(s) of '{spec.name}'"
    tags = {"search_space": space.name}
    if space.collapsed:
        headline += f" ({len(space.collapsed)} grid combination(s) run once: {space.describe_collapsed()})"
        tags["collapsed"] = space.describe_collapsed()

    def report(results: Any, tracker: tracking.SweepTracker, folder: str) -> None:
        table = results_table(results, space)
        print_table(table, space, args.top)
        log_summary(tracker, table, space)

    return executor.Plan(
        name_prefix=space.name, spec=spec, base_config=base_config, resources=resources,
        num_trials=space.num_trials(), mlflow_experiment=args.experiment or space.name,
        headline=headline,
        params={**space.fixed, "space": space.name, "metric": space.metric, "mode": space.mode},
        tags=tags, setup=setup, report=report, max_failures=args.max_failures,
        search={"space": space.searched, "seeds": space.seeds,
                **({"samples": space.samples} if space.samples > 1 else {}), "scheduler": space.scheduler},
    )


def make_scheduler(space: spaces.SweepSpace, base_config: dict[str, Any],
                   spec: registry.TrainableSpec | None = None) -> Any:
    """ASHA stops trials whose metric trails at the rungs (grace_period, grace_period * eta, ...), counted in the
    trainable's declared budget (epochs; frames for DQN) up to the config's budget."""
    if space.scheduler["type"] == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    budget_key, reported = (spec or registry.get(space.trainable)).budget
    return ASHAScheduler(
        time_attr=reported,
        max_t=base_config[budget_key],
        grace_period=space.scheduler.get("grace_period", 1),
        reduction_factor=float(space.scheduler.get("reduction_factor", 2)),
    )


def results_table(results: Any, space: spaces.SweepSpace) -> Any:
    """One row per trial: swept values, the metric's last value, the budget reached, status; best first by the
    metric's declared direction."""
    import pandas as pd

    spec = registry.get(space.trainable)
    mode = space.mode or spec.mode(space.metric)
    reached = spec.budget[1]  # the reported metric that counts up to the budget (epoch, env_frames, ...)
    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name}
        row.update({key: config.get(key) for key in space.swept_keys()})
        row[space.metric] = metrics.get(space.metric)
        row[reached] = metrics.get(reached)
        row["status"] = executor.completion_status(spec, result)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(space.metric, ascending=mode == "min", na_position="last", kind="stable")
    return table.reset_index(drop=True)


def print_table(table: Any, space: spaces.SweepSpace, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    best = Table(title=f"best trials of '{space.name}' by {space.metric} ({space.mode})")
    for column in table.columns:
        best.add_column(str(column), justify="right" if column != "trial_id" else "left")
    for _, row in table.head(top).iterrows():
        best.add_row(*(fmt_number(v) for v in row))
    console.print(best)
    grouping = [k for k in space.swept_keys() if k != "seed"]
    if space.seeds > 1 and grouping and not table.empty:
        grouped = stats.group_summary(table, grouping, space.metric)
        grouped = grouped.sort_values("mean", ascending=space.mode == "min", kind="stable")
        over_seeds = Table(title=f"{space.metric} over {space.seeds} seeds (95% t-interval)")
        columns = [*grouping, "mean", "std", "n", "ci_low", "ci_high"]
        for column in columns:
            over_seeds.add_column(column, justify="right")
        for _, row in grouped[columns].iterrows():
            over_seeds.add_row(*(fmt_number(v) for v in row))
        console.print(over_seeds)


def log_summary(tracker: tracking.SweepTracker, table: Any, space: spaces.SweepSpace) -> None:
    """The best trial on the parent run, and the whole table as an artifact."""
    import tempfile

    if table.empty or tracker.parent_run_id is None:
        return
    best = table.iloc[0]
    client = tracker.client
    if best[space.metric] is not None and best[space.metric] == best[space.metric]:  # not None, not NaN
        client.log_metric(tracker.parent_run_id, f"best_{space.metric}", float(best[space.metric]))
    client.set_tag(tracker.parent_run_id, "best_trial_id", str(best["trial_id"]))
    client.set_tag(tracker.parent_run_id, "best_config",
                   json.dumps({k: _plain(best[k]) for k in space.swept_keys()}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        table.to_csv(path, index=False)
        client.log_artifact(tracker.parent_run_id, str(path))


def print_catalogue() -> None:
    from rich.console import Console
    from rich.table import Table

    trainables = Table(title="registered trainables")
    for column in ("name", "ranks by", "budget", "description"):
        trainables.add_column(column)
    for name in registry.names():  # loads every trainable (RLlib's algorithms too): the one command that must
        spec = registry.get(name)
        ranks = f"{spec.primary} ({spec.mode(spec.primary)})" if spec.primary else ""
        trainables.add_row(name, ranks, spec.budget[0], spec.description)
    available = Table(title="search spaces (search_spaces/)")
    for column in ("name", "trainable", "trials", "description"):
        available.add_column(column)
    for name in spaces.available_spaces():
        space = spaces.load_space(name)
        space.validate(registry.get(space.trainable))  # counts grid combinations that run once as one
        available.add_row(name, space.trainable, str(space.num_trials()), space.description)
    Console().print(trainables, available)


def load_sweep_space(args: argparse.Namespace) -> spaces.SweepSpace:
    """The space file with this command line's --set / --seeds / --samples / --scheduler applied."""
    space = spaces.load_space(args.space)
    overrides = spaces.absolute_paths(spaces.parse_overrides(args.set), registry.get(space.trainable))
    return apply_run_flags(space.with_overrides(overrides), args)


def apply_run_flags(space: spaces.SweepSpace, args: argparse.Namespace) -> spaces.SweepSpace:
    """``--seeds`` / ``--samples`` / ``--scheduler`` over the space file's own values."""
    if args.seeds is not None:
        space.seeds = _positive(args.seeds, "--seeds")
    if args.samples is not None:
        space.samples = _positive(args.samples, "--samples")
    if args.scheduler is not None:
        space.scheduler = spaces.parse_scheduler(args.scheduler)
    return space


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise cli.UserError(f"{flag} must be >= 1, got {value}")
    return value


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    sys.exit(cli.run(main))
