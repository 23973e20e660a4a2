"""What a researcher sees in MLflow's own UI: experiments marked as model training, a parent run that explains its
sweep (its description: command, search space, resources, and at the end the ranked settings), the sweep's plots on
the parent run, and per trial the ranked metrics' final and best values under stable names.

Only the Tune driver calls this (the tracking module's rule). Nothing here names a method's metrics: they come from
the plan (the metric a sweep ranks by) and the trainable's registered declaration (its primary metric). The ranking
and the plots are ``orchestrator.compare``'s own, run on the sweep's parent run when the sweep ends.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import recovery
from orchestrator.tables import fmt_number, markdown_table

if TYPE_CHECKING:  # the executor imports this module; type hints only, no import cycle
    from orchestrator.executor import Plan
    from orchestrator.tracking import SweepTracker

# MLflow 3's experiment type, exactly as its UI writes it when a user picks "Machine learning" for an experiment
# (mlflow/server/js: setExperimentTag({key: "mlflow.experimentKind", value}); the Python client only ever sets
# "genai_development", in mlflow/demo). MLflow 3.17's UI picks its start page from a global GenAI / Model training
# switch instead (the ``workflowType`` URL parameter, else the browser's last choice, else GenAI), so the links
# below carry ``workflowType=machine_learning`` too.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
WORKFLOW_QUERY = "workflowType=machine_learning"
NOTE_TAG = "mlflow.note.content"  # the run's "Description" in the UI (markdown)
NOTE_LIMIT = 8000  # MLflow's limit on a run tag's value
RESULTS_HEADING = "## Results"  # the description's part written when the sweep ends (replaced on a resume's end)
PLOTS = "plots"  # the parent run's artifact folder of the sweep's plots
# Per trial, the ranked metric's value at the last report and its best in the declared direction. A prefix, not a
# suffix: MLflow's chart view makes one section per prefix before "/", so "final" and "best" each become one section
# with a bar chart per metric comparing every trial; in the column chooser they sort together, apart from the
# per-epoch metrics whose last value the table already shows.
FINAL_PREFIX = "final/"
BEST_PREFIX = "best/"
ROWS = 20  # ranked groups written into the description (the rest: orchestrator.compare)


def mark_model_training(client: Any, experiment_id: str, experiment: Any = None) -> None:
    """Tag the experiment as model training unless it already is (``experiment``: the entity when the caller has
    it, None for one just created). An experiment other tools made keeps its own kind."""
    tags = getattr(experiment, "tags", None) or {}
    if tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """Where the experiment's runs table is: a URL for a tracking server, else how to serve the store and the
    page to open."""
    path = f"#/experiments/{experiment_id}/runs?{WORKFLOW_QUERY}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    serve = shlex.join(["mlflow", "server", "--backend-store-uri", tracking_uri, "--port", "5000"])
    return f"`{serve}`, then http://127.0.0.1:5000/{path}"


def summary_metrics(plan: Plan) -> list[tuple[str, str]]:
    """(metric, min|max) a trial's run gets ``final/`` and ``best/`` values of: the metric the sweep ranks by (the
    parent run's ``metric`` param) and the trainable's declared primary metric, once each."""
    wanted = [(plan.params.get("metric"), plan.params.get("mode"))]
    if plan.spec.primary:
        wanted.append((plan.spec.primary, plan.spec.mode(plan.spec.primary)))
    out: list[tuple[str, str]] = []
    for metric, mode in wanted:
        if metric and mode in ("min", "max") and metric not in [m for m, _ in out]:
            out.append((str(metric), str(mode)))
    return out


def final_and_best(metrics: Sequence[tuple[str, str]], result: Mapping[str, Any], best: dict[str, float],
                   step: int, now: int) -> list[Any]:
    """``final/<metric>`` (this report's value) and ``best/<metric>`` (the best so far in the declared direction) for
    one report, as MLflow metrics at the report's step: they ride in the report's own ``log_batch``, so they cost no
    store call of their own (bench/bookkeeping.py), and the run's latest values are the last and the best report's.
    ``best`` (metric -> best so far) is updated; a resumed run seeds it from the run's recorded ``best/`` values."""
    from mlflow.entities import Metric

    out = []
    for metric, mode in metrics:
        value = result.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:  # absent, or NaN
            continue
        so_far = best.get(metric)
        if so_far is None or (value < so_far if mode == "min" else value > so_far):
            best[metric] = so_far = float(value)
        out += [Metric(FINAL_PREFIX + metric, float(value), now, step), Metric(BEST_PREFIX + metric, so_far, now, step)]
    return out


def recorded_best(metrics: Sequence[tuple[str, str]], run_metrics: Mapping[str, float]) -> dict[str, float]:
    """The ``best/`` values a resumed run already has (its latest values are the best so far)."""
    return {m: run_metrics[BEST_PREFIX + m] for m, _ in metrics if BEST_PREFIX + m in run_metrics}


# -- the parent run's description ------------------------------------------------------------------------------
def describe_sweep(plan: Plan, *, command: str, resources: str, where: str, folder: str) -> str:
    """The parent run's description when the sweep starts (markdown): what ran, over what, on what, and where in
    the UI its trials and plots are."""
    import yaml

    metric, mode = plan.params.get("metric"), plan.params.get("mode")
    def flow(value: Any) -> str:  # one line, as a space file writes it: {grid: [0.2, 0.5]}
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()

    lines_of_space = []
    for key, value in _plain(plan.search).items():
        if isinstance(value, dict) and value:  # one line per searched key
            lines_of_space += [f"{flow(key)}:", *(f"  {flow(k)}: {flow(v)}" for k, v in value.items())]
        else:
            lines_of_space.append(f"{flow(key)}: {flow(value)}")
    space = "\n".join(lines_of_space)
    lines = [
        f"**{plan.headline}**",
        "",
        f"Trials are ranked by `{metric}` ({mode} is better). Each child run is one trial, named by its swept "
        f"values; its `{FINAL_PREFIX}{metric}` and `{BEST_PREFIX}{metric}` metrics compare the trials in the Runs "
        "table (Columns) and the Chart view.",
        "",
        "### Command",
        f"```\n{command}\n```",
        "### Search space",
        f"```yaml\n{space or '(one configuration)'}\n```",
        "### Resources",
        f"{resources}; Ray: {where}; Tune storage: `{folder}`",
        "",
        "### Where to look",
        "- **Trials**: in the experiment's Runs table, expand this run's row (the **+** beside its name); or the "
        "*Child runs* links under *About this run* on this page.",
        f"- **Plots**: the *Artifacts* tab of this run, folder `{PLOTS}/` (drawn when the sweep ends).",
        "- **Ranked settings**: below, when the sweep ends; `python -m orchestrator.compare --runs <this run's id> "
        "--html report.html` for the full report.",
    ]
    return "\n".join(lines)


def finish_parent(tracker: SweepTracker, plan: Plan) -> None:
    """When the sweep ends: rank its trials and draw its plots with ``orchestrator.compare`` (the learning curves
    per setting, the metric against the swept parameter; a search's Pareto front and reward over trials, as the plan
    asks), log the plots to the parent run under ``plots/`` and write the ranked settings into its description.
    A failure here warns and leaves the sweep's outcome alone: the trials are recorded either way."""
    run_id = tracker.parent_run_id
    if run_id is None or getattr(tracker, "lost", None):
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results, plots = _compare(tracker, plan, Path(tmp))
            for plot in plots:
                tracker.client.log_artifact(run_id, str(plot), artifact_path=PLOTS)
        if plots:
            results += "\n\nPlots (this run's *Artifacts*, `plots/`): " + ", ".join(f"`{p.name}`" for p in plots)
        note = tracker.client.get_run(run_id).data.tags.get(NOTE_TAG, "")
        note = note.split(f"\n{RESULTS_HEADING}\n", 1)[0].rstrip()
        tracker.client.set_tag(run_id, NOTE_TAG, _fit(f"{note}\n\n{RESULTS_HEADING}\n\n{results}\n"))
    except recovery.TrackingLostError:
        raise
    except Exception as err:  # noqa: BLE001 (a plot or a table must not turn a finished sweep into a failed one)
        print(f"warning: the sweep's ranking and plots were not written to its parent run: {type(err).__name__}: "
              f"{err}", file=sys.stderr)


def _compare(tracker: SweepTracker, plan: Plan, folder: Path) -> tuple[str, list[Path]]:
    """``orchestrator.compare --runs PARENT --plots FOLDER`` in this process: the ranked groups as markdown and
    the plots drawn."""
    from orchestrator import cli
    from orchestrator.compare import cli as compare_cli

    args = compare_cli.build_parser().parse_args(
        ["--runs", str(tracker.parent_run_id), "--tracking-uri", tracker.tracking_uri, "--plots", str(folder),
         *plan.compare_flags])
    try:
        result = compare_cli.compare_runs(args)
    except cli.UserError as err:  # e.g. no trial finished: nothing to rank, nothing to draw
        return f"Nothing to rank: {err}", []
    plots = [p for p in compare_cli.write_files(args, [], result) if p.suffix == ".png"]
    return ranked_markdown(result), plots


def ranked_markdown(result: Any) -> str:
    """The ranked groups of a comparison (``compare.Comparison``) as a markdown table, mean ± std over seeds, and
    the verdict on the winner."""
    groups, by = result.groups, list(result.by)
    rows = []
    for _, row in groups.head(ROWS).iterrows():
        interval = (f"[{fmt_number(row['ci_low'])}, {fmt_number(row['ci_high'])}]"
                    if row["ci_low"] == row["ci_low"] else "")  # NaN with a single run
        spread = f" ± {fmt_number(row['std'])}" if row["std"] == row["std"] else ""
        rows.append([int(row["rank"]), *(row[key] for key in by), f"{fmt_number(row['mean'])}{spread}",
                     int(row["n"]), interval])
    columns = ["rank", *by, f"{result.value_name} (mean ± std)", "n", "95% interval"]
    text = f"{result.title}\n\n{markdown_table(rows, columns)}"
    if len(groups) > ROWS:
        text += f"\n({len(groups) - ROWS} more group(s): `python -m orchestrator.compare`)\n"
    notes = "".join(f"\n- {note}" for note in result.notes)
    return f"{text}\n{result.verdict.text}" + (f"\n\nNotes:{notes}" if notes else "")


def _fit(note: str) -> str:
    """The description within MLflow's limit on a tag's value (the ranked table is cut first: it is at the end)."""
    marker = "\n\n(cut to MLflow's limit on a description; `python -m orchestrator.compare` shows all)"
    return note if len(note) <= NOTE_LIMIT else note[:NOTE_LIMIT - len(marker)] + marker


def _plain(value: Any) -> Any:
    """Mappings and sequences of a search space as plain YAML-safe values (tuples, numpy numbers, paths)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
