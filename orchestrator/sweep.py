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
import datetime as dt
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, cluster, runner, spaces, tracking
from trainables import registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep",
        description="Run a Ray Tune sweep over a search space (search_spaces/NAME.yaml or a path); "
        "every trial is a nested MLflow run.",
    )
    parser.add_argument("space", nargs="?", help="search space name or YAML path")
    parser.add_argument("--list", action="store_true", help="list registered trainables and search spaces")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (split over workers)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial (split over workers; > 0 runs a Ray Train worker group)")
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
    parser.add_argument("--max-failures", type=int, default=0,
                        help="retries of a failed trial, each from its last checkpoint (use >0 on spot instances)")
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
    return execute(args, argv, parse=build_parser().parse_args, load=load_sweep_space,
                   prog="python -m orchestrator.sweep", label=args.space)


def execute(args: argparse.Namespace, argv: list[str], *, parse: Callable[[list[str]], argparse.Namespace],
            load: Callable[[argparse.Namespace], spaces.SweepSpace], prog: str, label: str,
            stem: str | None = None) -> int:
    """Run (or ``--resume``) the sweep that ``load(args)`` describes: Ray, the MLflow parent run, Tune, the table.

    ``argv`` is saved in the sweep's record; a resume re-parses it with ``parse`` so it runs the same sweep.
    ``label`` names the sweep on the command line (``prog label --resume`` continues it); ``stem`` is the prefix of
    the experiment names a bare ``--resume`` looks through (default: ``label``'s).
    """
    # 1. Everything the user gave is checked before Ray starts or MLflow is touched.
    storage = cluster.normalize_storage(args.storage)
    record = None
    if args.resume:
        # A resumed sweep is the same sweep: its space and overrides come from the record, not from this call.
        name = resolve_experiment_name(args, stem or Path(label).stem, storage)
        record = cluster.read_record(f"{storage}/{name}/sweep.json")
        original = parse(record["argv"])
        space = load(original)
        tracking_uri = record["tracking_uri"]
    else:
        original = args
        space = load(args)
        name = resolve_experiment_name(args, space.name, storage)
        tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri)
    spec = registry.get(space.trainable)
    base_config = space.validate(spec)
    resources = runner.TrialResources(
        num_workers=original.workers, cpus=original.cpus_per_trial, gpus=original.gpus_per_trial
    )
    tracking.check_reachable(tracking_uri)
    held = runner.describe_resources(spec.name, resources, base_config)

    # 2. Ray, then the parent run, then Tune.
    where = cluster.connect(args.address, num_cpus=args.num_cpus)
    if where == cluster.EMBEDDED:
        runner.check_fits_local(spec.name, resources, base_config)
    if (args.address or "ray://" in where) and not cluster.is_shared(storage):
        print(f"warning: storage {storage} is local to this node; a multi-node cluster needs s3:// or NFS",
              file=sys.stderr)
    print(f"sweep '{space.name}': {space.num_trials()} trial(s) of '{spec.name}' on {where}; "
          f"{held}; MLflow {tracking_uri}; storage {storage}/{name}")

    tracker = tracking.SweepTracker(tracking_uri, record["mlflow_experiment"] if record else (
        args.experiment or space.name))
    if record:
        tracker.reopen_parent(record["parent_run_id"])
    else:
        tags = {"trainable": spec.name, "search_space": space.name, "ray.experiment": f"{storage}/{name}",
                "command": f"{prog} {shlex.join(argv)}",
                "resources": held}
        tracker.start_recorded_parent(name, {**space.fixed, "space": space.name, "metric": space.metric,
                                             "mode": space.mode}, tags,
                                      record_path=f"{storage}/{name}/sweep.json", argv=argv)

    def report(results: Any) -> None:
        table = results_table(results, space)
        print_table(table, space, args.top)
        log_summary(tracker, table, space)

    def fit() -> Any:  # built inside run_tune, so a failed restore also closes the parent run
        return build_tuner(space, spec.name, base_config, resources, tracker, storage, name, original,
                           resume=bool(record)).fit()

    resume = f"{prog} {label} --resume --name {name}" + (
        f" --storage {storage}" if args.storage else "")
    return cli.run_tune(tracker, fit, report, space.num_trials(), resume)


def build_tuner(space: spaces.SweepSpace, trainable: str, base_config: dict[str, Any],
                resources: runner.TrialResources, tracker: tracking.SweepTracker, storage: str, name: str,
                args: argparse.Namespace, *, resume: bool) -> Any:
    from ray import tune

    trainable_fn = runner.make_trainable(trainable, resources, storage_path=storage, experiment_name=name)
    if resume:
        # The callback (with the parent run id) comes back with the experiment's pickled RunConfig.
        return tune.Tuner.restore(f"{storage}/{name}", trainable=trainable_fn, resume_unfinished=True,
                                  resume_errored=True)
    tags = {"trainable": trainable, "search_space": space.name}
    commit = tracking.git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    callback = tracking.MlflowTrialCallback(tracker, tags=tags, swept_keys=space.swept_keys())
    return tune.Tuner(
        trainable_fn,
        param_space=space.param_space(base_config),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            num_samples=space.samples,
            max_concurrent_trials=args.max_concurrent or None,
            scheduler=make_scheduler(space, base_config),
            # A trial process is reused by the next trial of the same resources: saves the ~2 s start of a fresh
            # process (and its torch import) per trial; bench/trial_overhead.py measures it.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def make_scheduler(space: spaces.SweepSpace, base_config: dict[str, Any]) -> Any:
    """ASHA stops trials whose metric trails at the rungs (grace_period, grace_period * eta, ...) epochs."""
    if space.scheduler["type"] == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=int(base_config.get("epochs", 100)),
        grace_period=int(space.scheduler.get("grace_period", 1)),
        reduction_factor=float(space.scheduler.get("reduction_factor", 2)),
    )


def results_table(results: Any, space: spaces.SweepSpace) -> Any:
    """One row per trial: swept values, the metric's last value, epochs reached, status; best first."""
    import pandas as pd

    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        row = {"trial_id": metrics.get("trial_id") or Path(result.path).name}
        row.update({key: config.get(key) for key in space.swept_keys()})
        row[space.metric] = metrics.get(space.metric)
        # Supervised trainables report once per epoch; RL ones once per algorithm iteration.
        rounds = "epochs" if "epochs" in config else "iterations"
        row[rounds] = metrics.get("training_iteration")
        if result.error:
            row["status"] = "ERROR"
        elif row[rounds] is not None and row[rounds] >= config.get("epochs", 0):
            row["status"] = "OK"
        else:
            row["status"] = "partial"  # stopped early by the scheduler, or cut off by an interrupt
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(space.metric, ascending=space.mode == "min", na_position="last")
    return table.reset_index(drop=True)


def print_table(table: Any, space: spaces.SweepSpace, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    best = Table(title=f"best trials of '{space.name}' by {space.metric} ({space.mode})")
    for column in table.columns:
        best.add_column(str(column), justify="right" if column != "trial_id" else "left")
    for _, row in table.head(top).iterrows():
        best.add_row(*(_fmt(v) for v in row))
    console.print(best)
    grouping = [k for k in space.swept_keys() if k != "seed"]
    if space.seeds > 1 and grouping and not table.empty:
        grouped = table.groupby(grouping, dropna=False)[space.metric].agg(["mean", "std", "count"]).reset_index()
        grouped = grouped.sort_values("mean", ascending=space.mode == "min")
        over_seeds = Table(title=f"{space.metric} over {space.seeds} seeds")
        for column in [*grouping, "mean", "std", "n"]:
            over_seeds.add_column(column, justify="right")
        for _, row in grouped.iterrows():
            over_seeds.add_row(*(_fmt(v) for v in row))
        console.print(over_seeds)


def log_summary(tracker: tracking.SweepTracker, table: Any, space: spaces.SweepSpace) -> None:
    """The best trial on the parent run, and the whole table as an artifact."""
    import tempfile

    if table.empty or tracker.parent_run_id is None:
        return
    best = table.iloc[0]
    client = tracker.client
    if best[space.metric] is not None:
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
    trainables.add_column("name")
    trainables.add_column("description")
    for name in registry.names():
        trainables.add_row(name, registry.get(name).description)
    available = Table(title="search spaces (search_spaces/)")
    for column in ("name", "trainable", "trials", "description"):
        available.add_column(column)
    for name in spaces.available_spaces():
        space = spaces.load_space(name)
        available.add_row(name, space.trainable, str(space.num_trials()), space.description)
    Console().print(trainables, available)


def load_sweep_space(args: argparse.Namespace) -> spaces.SweepSpace:
    """The space file with this command line's --set / --seeds / --samples / --scheduler applied."""
    overrides = spaces.parse_overrides(args.set)
    if overrides.get("data_dir"):
        # Trials run in other working directories (and on other nodes): make a local path absolute here.
        overrides["data_dir"] = str(Path(overrides["data_dir"]).expanduser().resolve())
    return apply_run_flags(spaces.load_space(args.space).with_overrides(overrides), args)


def apply_run_flags(space: spaces.SweepSpace, args: argparse.Namespace) -> spaces.SweepSpace:
    """``--seeds`` / ``--samples`` / ``--scheduler`` over the space file's own values."""
    if args.seeds is not None:
        space.seeds = _positive(args.seeds, "--seeds")
    if args.samples is not None:
        space.samples = _positive(args.samples, "--samples")
    if args.scheduler is not None:
        space.scheduler = spaces.parse_scheduler(args.scheduler)
    return space


def resolve_experiment_name(args: argparse.Namespace, space_name: str, storage: str) -> str:
    if args.name:
        return args.name
    if not args.resume:
        return f"{space_name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    root = Path(storage)
    candidates = sorted(p.name for p in root.glob(f"{space_name}-*") if (p / "sweep.json").is_file()) \
        if "://" not in storage else []
    if not candidates:
        raise cli.UserError(f"nothing to resume: no '{space_name}-*' sweep under {storage} (give --name)")
    return candidates[-1]


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise cli.UserError(f"{flag} must be >= 1, got {value}")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    sys.exit(cli.run(main))
