"""The command line of ``python -m orchestrator.compare``: read, check every name, rank, then print and write."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator import cli
from orchestrator.compare import images, plots, read, report
from orchestrator.compare.directions import Directions, parse_objectives
from orchestrator.compare.ranking import Verdict, aggregate, pareto_points, top_two_verdict
from orchestrator.compare.select import final_values, selected_steps
from orchestrator.tables import markdown_table


@dataclass
class Comparison:
    """What one comparison found: the terminal output and every file are written from it."""

    uri: str
    client: Any
    parents: pd.DataFrame
    trials: pd.DataFrame  # the FINISHED trial runs, as read
    table: pd.DataFrame  # one row per trial: keys, seed, the value that stands for it (and its step)
    groups: pd.DataFrame  # ranked, best first
    histories: pd.DataFrame  # the ranked metric's every logged value (for the learning curves)
    by: list[str]
    metric: str
    value_name: str
    title: str
    where: str
    notes: list[str]
    verdict: Verdict
    pareto: list[tuple[str, str]] | None = None
    reward: tuple[str, str] | None = None
    points: pd.DataFrame | None = None  # trials with the --pareto / --reward metrics (and a "pareto" mask)
    extra_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    shown: pd.DataFrame | None = None  # the groups drawn (--best-per); None: the best --curves groups
    curve_histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # --curves-of metrics' histories


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.compare",
        description="Compare the trials of MLflow experiments (sweeps and searches): groups over seeds, ranking, "
        "a test of the winner against the runner-up, tables, plots and an HTML report.",
    )
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="MLflow experiment names or ids")
    parser.add_argument("--runs", nargs="+", metavar="PARENT_RUN_ID", help="only these sweeps (parent run ids)")
    parser.add_argument("--by", help="comma-separated grouping params (default: the swept keys minus seed); "
                        "'experiment' and 'sweep' group by those")
    parser.add_argument("--metric", help="metric to rank by (default: the sweep's metric, else the trainable's "
                        "primary metric)")
    parser.add_argument("--mode", choices=["min", "max"],
                        help="min or max is best (default: the direction the trainable declares for the metric)")
    parser.add_argument("--at", default="last",
                        help="which value stands for a run: last (default), best (at the step where the --select "
                        "metric is best) or a step number")
    parser.add_argument("--select", metavar="METRIC",
                        help="with --at best: the validation metric that chooses each run's step (default: the "
                        "trainable's primary metric); never a test metric")
    parser.add_argument("--x", help="the parameter on the x axis of the metric-vs-parameter plot "
                        "(default: the first numeric grouping key)")
    parser.add_argument("--pareto", metavar="Y[:MODE],X[:MODE]",
                        help="Pareto front of two metrics, e.g. accuracy:max,latency_ms:min (Y drawn over X; "
                        "without :MODE the declared direction)")
    parser.add_argument("--reward", metavar="METRIC[:MODE]", help="plot this metric over trials, e.g. reward:max")
    parser.add_argument("--top", type=int, default=20, help="groups shown in the terminal (default 20)")
    parser.add_argument("--curves", type=int, default=10, help="best groups drawn as learning curves (default 10)")
    parser.add_argument("--curves-of", metavar="METRIC[,METRIC]",
                        help="also draw these metrics' learning curves (e.g. train_loss), for the same groups")
    parser.add_argument("--best-per", metavar="KEY[,KEY]",
                        help="the curves and images show each value of these grouping keys at its best setting of "
                        "the others (e.g. --best-per optimizer: each optimizer at its tuned learning rate), and a "
                        "table of those groups")
    parser.add_argument("--images", type=int, default=4, metavar="N",
                        help="the HTML report shows the images (task/ artifacts: samples, reconstructions) of the "
                        "N best groups' lowest-seed runs (default 4; 0: none)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    if not args.experiments and not args.runs:
        if args.serve:
            return serve(read.open_store(args.tracking_uri), args.host, args.port)
        raise cli.UserError("name an experiment (or --runs PARENT_RUN_ID, or --serve alone for the MLflow UI)")
    with read.store_errors(args.tracking_uri):
        return report_comparison(args, argv)


def report_comparison(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Compare, print the ranking and verdict, write the files asked for (and serve, if asked)."""
    result = compare_runs(args)
    for note in result.notes:
        print(f"note: {note}")
    report.print_groups(result.groups, result.title, args.top)
    print(result.verdict.text)
    if "Pareto front" in result.extra_tables:
        (y, y_mode), (x, x_mode) = result.pareto
        print(f"Pareto front ({y} {y_mode}, {x} {x_mode}): {len(result.extra_tables['Pareto front'])} of "
              f"{len(result.points)} trials")
        print(markdown_table(result.extra_tables["Pareto front"]), end="")
    for output in write_files(args, argv, result):
        print(f"wrote {output}")
    if args.serve:
        return serve(result.uri, args.host, args.port)
    return 0


def check_flags(args: argparse.Namespace) -> tuple[list[tuple[str, str | None]] | None, tuple[str, str | None] | None]:
    """The flags that need no store: --at, --select, and the --pareto / --reward objectives (parsed)."""
    if args.at not in ("last", "best") and not args.at.lstrip("-").isdigit():
        raise cli.UserError(f"--at {args.at}: give last, best or a step number")
    if args.select and args.at != "best":
        raise cli.UserError("--select chooses the step for --at best: give --at best too")
    pareto = parse_objectives(args.pareto, 2) if args.pareto else None
    return pareto, parse_objectives(args.reward, 1)[0] if args.reward else None


def compare_runs(args: argparse.Namespace) -> Comparison:
    """Read, check every name (before anything is written anywhere), choose each run's value, rank and judge."""
    pareto, reward = check_flags(args)

    # 1. Read, and check every name.
    from mlflow.tracking import MlflowClient

    uri = read.open_store(args.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    if args.experiments:
        experiments = read.resolve_experiments(client, args.experiments)
    else:
        experiments = [client.get_experiment(read.parent_experiment(client, run_id)) for run_id in args.runs]
    names = {e.experiment_id: e.name for e in {e.experiment_id: e for e in experiments}.values()}
    parents, trials = read.split_runs(read.read_runs(uri, list(names)), args.runs, names)
    if trials.empty:
        raise cli.UserError(f"no trial runs in {', '.join(names.values())}")
    directions = Directions.of(parents, read.trainable_names(parents, trials))
    metric = directions.metric(args.metric)
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by is not None else read.default_grouping(trials)
    extra_metrics = [name for name, _ in (pareto or [])] + ([reward[0]] if reward else [])
    read.check_names(trials, [metric, *([args.select] if args.select else []), *extra_metrics], by)
    if args.x and args.x not in by:
        raise cli.UserError(f"--x {args.x} is not a grouping key; grouping keys: {', '.join(by) or '(none)'}")
    best_per = [k.strip() for k in (args.best_per or "").split(",") if k.strip()]
    for key in best_per:
        if key not in by:
            raise cli.UserError(f"--best-per {key} is not a grouping key; grouping keys: {', '.join(by) or '(none)'}")
    curve_metrics = [m.strip() for m in (args.curves_of or "").split(",") if m.strip() and m.strip() != metric]
    read.check_names(trials, curve_metrics, by)
    mode, mode_from = directions.mode(metric, args.mode)
    select = directions.selection(args.select, metric) if args.at == "best" else None
    if select is not None:
        read.check_names(trials, [select], by)
    select_mode = (mode if select == metric else directions.mode(select)[0]) if select else None
    pareto = [(name, directions.mode(name, given)[0]) for name, given in pareto] if pareto else None
    reward = (reward[0], directions.mode(*reward)[0]) if reward else None

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

    # 2. The value that stands for each trial: the last one, or the one at the step the selection metric chose.
    run_ids = list(trials["run_id"])
    histories = pd.DataFrame(columns=read.HISTORY_COLUMNS)
    if args.plots or args.html or args.log or args.at != "last":  # the learning curves need them too
        histories = read.metric_histories(client, run_ids, metric)
    steps = None
    if args.at != "last":
        select_histories = None
        if select is not None:
            select_histories = histories if select == metric else read.metric_histories(client, run_ids, select)
        steps = selected_steps(run_ids, args.at, select_histories, select_mode or mode)
    value_name = metric if args.at == "last" else f"{metric}@{args.at}"
    if select is not None and select != metric:
        value_name = f"{metric}@best {select}"
    values = final_values(trials, metric, args.at, histories, steps)
    table = read.trial_table(trials, by, values, value_name, steps)
    if table[value_name].isna().any():
        notes.append(f"{int(table[value_name].isna().sum())} trial(s) have no {value_name} and are left out")
    varying = read.varying_fixed_params(trials, by)
    if varying:
        notes.append(f"these params also differ between the runs but are not grouped by: {', '.join(varying)} "
                     "(add them to --by, or pick sweeps with --runs)")
    notes += directions.notes
    groups = aggregate(table, by, value_name, mode)
    if groups.empty:
        raise cli.UserError(f"no trial has a value for {value_name}")
    verdict = top_two_verdict(table, groups, by, value_name, mode)

    where = ", ".join(names.values())
    chosen = f"; each run's step: its best {select} ({select_mode})" if select else ""
    title = (f"{value_name} over seeds by {', '.join(by) or '(no grouping)'}; {mode} is best ({mode_from}); "
             f"{len(table)} trials of {where}{chosen}")
    result = Comparison(uri=uri, client=client, parents=parents, trials=trials, table=table, groups=groups,
                        histories=histories, by=by, metric=metric, value_name=value_name, title=title, where=where,
                        notes=notes, verdict=verdict, pareto=pareto, reward=reward)
    if best_per:  # groups are ranked best first: the first of each value is that value's best setting
        result.shown = groups.groupby(best_per, sort=False, dropna=False).head(1).reset_index(drop=True)
        result.extra_tables[f"Best per {', '.join(best_per)}"] = report.display_table(result.shown)
    if args.plots or args.html or args.log:
        result.curve_histories = {m: read.metric_histories(client, run_ids, m) for m in curve_metrics}

    # 3. Pareto front and reward: each trial's values at the same step as the ranked metric (one epoch a trial).
    if pareto or reward:
        points = table.copy()
        for name, _ in [*(pareto or []), *([reward] if reward else [])]:
            named = read.metric_histories(client, run_ids, name) if steps is not None else None
            points[name] = final_values(trials, name, args.at, named, steps).to_numpy()
        result.points = points
        if pareto:
            result.points = pareto_points(points, pareto)
            front = result.points[result.points["pareto"]].sort_values(pareto[0][0], ascending=pareto[0][1] == "min")
            result.extra_tables["Pareto front"] = front[["run_name", *by, *(n for n, _ in pareto)]]
    return result


def write_files(args: argparse.Namespace, argv: Sequence[str] | None, r: Comparison) -> list[Path]:
    """CSV, Markdown, plots and the HTML report as asked; with --log, all of them on the parent runs."""
    outputs: list[Path] = []
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        r.groups.to_csv(args.csv, index=False)
        outputs.append(args.csv)
    if args.markdown:
        outputs.append(report.write_markdown(args.markdown, r.title, r.groups, r.verdict))
    with tempfile.TemporaryDirectory() as tmp:
        plot_dir = args.plots or Path(tmp)
        drawn: list[Path] = []
        if args.plots or args.html or args.log:
            shown = r.groups if r.shown is None else r.shown
            for name, histories in {r.metric: r.histories, **r.curve_histories}.items():
                file = "learning_curves.png" if name == r.metric else f"learning_curves_{name}.png"
                curve = plots.plot_learning_curves(histories, r.table, shown, r.by, name, plot_dir / file,
                                                   args.curves)
                drawn += [curve] if curve else []
            # Against a categorical key (say one value per architecture) a line means nothing: only when asked.
            x = args.x or next((k for k in r.by if pd.api.types.is_numeric_dtype(r.groups[k])), None)
            if x is not None and len(r.groups) > 1:
                drawn.append(plots.plot_metric_vs_param(r.groups, r.by, x, r.value_name,
                                                        plot_dir / f"{r.metric}_vs_{x}.png"))
            if r.pareto and r.points is not None:
                drawn.append(plots.plot_pareto(r.points, r.pareto, plot_dir / "pareto.png"))
            if r.reward and r.points is not None:
                drawn.append(plots.plot_reward(r.points.dropna(subset=[r.reward[0]]), *r.reward,
                                               plot_dir / "reward.png"))
            if args.plots:
                outputs += drawn
        if args.html:
            intro = [f"Tracking store: {r.uri}",
                     "Command: python -m orchestrator.compare " + shlex.join(sys.argv[1:] if argv is None else argv),
                     f"Generated {dt.datetime.now().isoformat(timespec='seconds')}.",
                     *(f"Note: {n}" for n in r.notes), r.title]
            shown = r.groups if r.shown is None else r.shown
            pictures = images.fetch_group_images(r.client, r.table, shown, r.by, r.value_name, Path(tmp) / "images",
                                                 args.images) if args.images > 0 else []
            report.write_html(args.html, title=f"Comparison of {r.where}", intro=intro, verdict=r.verdict,
                              groups=r.groups, plots=drawn, provenance=report.provenance_table(r.parents, r.trials),
                              extra_tables=r.extra_tables, trials=r.table.drop(columns=["start_time"]),
                              images=pictures)
            outputs.append(args.html)
        if args.log:
            if r.parents.empty:
                print("note: these runs have no parent run; nothing logged")
            else:
                logged = list(drawn)
                if not args.csv:
                    logged.append(Path(tmp) / "groups.csv")
                    r.groups.to_csv(logged[-1], index=False)
                logged += [p for p in outputs if p not in drawn]
                report.log_to_parents(r.client, list(r.parents["run_id"]), logged)
                print(f"logged {len(logged)} file(s) to {len(r.parents)} parent run(s) under compare/")
    return outputs
