"""The one executor under every Tune-running command (``orchestrator.sweep``, ``orchestrator.nas``,
``orchestrator.rl``): checks, Ray, the MLflow parent run and its resume record, Tune, the final table and the exit
status, in that order and in one place.

A command turns its command line into a :class:`Plan` (what to run: the trainable, the validated base config, the
resources, how to build Tune's config and callback, how to report); :func:`execute` does the rest. Everything the
user gave is checked while the plan is made, **before** Ray starts or MLflow is touched: a mistake is one line and
exit status 2 (:func:`orchestrator.cli.run`). A run ends with exit 0 (every trial finished), 1 (a trial errored, or
Tune itself stopped: one line and the resume command), or 130 / 143 (SIGINT / SIGTERM: the parent run ends KILLED
and the command that continues it is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import cli, cluster, mlflow_ui, recovery, runner, tracking
from trainables import registry

RECORD = "sweep.json"  # beside the Tune experiment: parent run id, tracking URI, argv (what --resume reads)
# Retries of a failed trial, each from its last checkpoint. Above 0 because the common failure of a long sweep is a
# trial process killed from outside (Ray's OOM killer under a memory-hungry neighbour, a preempted node): the retry
# loses at most one report interval. A bug in the trainable fails 1 + 2 times (each attempt resumes from the last
# checkpoint, so the retries are as short as the bug is early) and then the trial's run ends FAILED with the reason.
DEFAULT_MAX_FAILURES = 2


_extra_parent_tags: dict[str, str] = {}


@contextlib.contextmanager
def parent_tags(tags: Mapping[str, str]) -> Iterator[None]:
    """Tag the parent run of every experiment started in this block (``orchestrator.repro`` marks a claim's runs so a
    later check finds them). Tags only a new parent: a resumed one keeps the tags it was created with."""
    saved = dict(_extra_parent_tags)
    _extra_parent_tags.update(tags)
    try:
        yield
    finally:
        _extra_parent_tags.clear()
        _extra_parent_tags.update(saved)


@dataclass
class TuneSetup:
    """What differs between the commands' Tune runs (built after Ray is up, so ``ray.tune`` imports late)."""

    tune_config: Any  # ray.tune.TuneConfig
    callback: tracking.MlflowTrialCallback
    param_space: dict[str, Any] | None = None
    keep_checkpoints: int = 2


@dataclass
class Plan:
    """One command line's experiment, validated: everything :func:`execute` needs beyond Ray and MLflow."""

    name_prefix: str  # a new experiment is PREFIX-YYYYmmdd-HHMMSS
    spec: registry.TrainableSpec
    base_config: dict[str, Any]
    resources: runner.TrialResources
    num_trials: int  # what a complete run finishes (searchers and grids expand lazily: not len(results))
    mlflow_experiment: str
    headline: str  # "sweep 'sd_rates': 8 trial(s) of 'resnet'"; where, resources and storage are added
    params: dict[str, Any]  # the parent run's params (metric and mode: what compare ranks by)
    tags: dict[str, str]
    setup: Callable[[tracking.SweepTracker, str], TuneSetup]  # (tracker, experiment folder) -> Tune's parts
    report: Callable[[Any, tracking.SweepTracker, str], None]  # (ResultGrid, tracker, experiment folder)
    max_failures: int = DEFAULT_MAX_FAILURES
    search: dict[str, Any] = field(default_factory=dict)  # what varies between trials (the parent's description)
    compare_flags: list[str] = field(default_factory=list)  # extra plots at the end, e.g. --pareto (mlflow_ui)


def execute(args: argparse.Namespace, argv: list[str], *, parse: Callable[[list[str]], argparse.Namespace],
            plan: Callable[[argparse.Namespace], Plan], prog: str, label: str, stem: str | None = None) -> int:
    """Run (or ``--resume``) the experiment ``plan(args)`` describes.

    ``argv`` is saved in the record; a resume re-parses it with ``parse`` so it runs the same experiment whatever
    this call's flags (only ``--address``/``--num-cpus``/``--storage``/``--name`` of this call apply). ``label``
    names the experiment on the command line (``prog label --resume`` continues it); ``stem`` is the prefix of the
    experiment names a bare ``--resume`` looks through (default: ``label``).
    """
    # 1. Everything the user gave is checked before Ray starts or MLflow is touched.
    storage = cluster.normalize_storage(args.storage)
    record = None
    if args.resume:
        name = args.name or latest_experiment(storage, stem or Path(label).stem)
        record = cluster.read_record(f"{storage}/{name}/{RECORD}")
        original = parse(record["argv"])
        the_plan = plan(original)
        tracking_uri = record["tracking_uri"]
    else:
        the_plan = plan(args)
        name = args.name or f"{the_plan.name_prefix}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri)
    spec, base = the_plan.spec, the_plan.base_config
    tracking.check_reachable(tracking_uri)
    recovery.bound_http_retries(tracking_uri)
    cluster.check_storage(storage)
    held = runner.describe_resources(spec.name, the_plan.resources, base)

    # 2. Ray, then the parent run, then Tune.
    where = cluster.connect(args.address, num_cpus=args.num_cpus)
    if where == cluster.EMBEDDED:
        runner.check_fits_local(spec.name, the_plan.resources, base)
    if (args.address or "ray://" in where) and not cluster.is_shared(storage):
        print(f"warning: storage {storage} looks local to this node; a multi-node cluster needs s3:// or a folder "
              "every node mounts (NFS: set DEEPREPRO_SHARED_STORAGE=1 to say so)", file=sys.stderr)
    folder = f"{storage}/{name}"
    print(f"{the_plan.headline} on {where}; {held}; MLflow {tracking_uri}; storage {folder}")

    tracker = tracking.SweepTracker(tracking_uri, record["mlflow_experiment"] if record else the_plan.mlflow_experiment)
    if record:
        tracker.reopen_parent(record["parent_run_id"])
        # A driver killed outright (kill -9, a lost node) closed nothing: its children are still RUNNING. Tune
        # reopens those it continues; the rest must not stay RUNNING (orchestrator.recovery says what else a kill
        # leaves and how the resumed run reconciles with MLflow).
        stale = tracker.close_stale_children()
        if stale:
            print(f"{stale} trial run(s) left RUNNING by a driver that did not stop cleanly: closed as KILLED "
                  "(the trials Tune continues reopen theirs)")
    else:
        tags = {"trainable": spec.name, "ray.experiment": folder, "command": f"{prog} {shlex.join(argv)}",
                "resources": held, **the_plan.tags, **_extra_parent_tags}
        tags[mlflow_ui.NOTE_TAG] = mlflow_ui.describe_sweep(the_plan, command=tags["command"], resources=held,
                                                            where=where, folder=folder)
        tracker.start_recorded_parent(name, the_plan.params, tags, record_path=f"{folder}/{RECORD}", argv=argv)
    print(f"MLflow UI: {mlflow_ui.runs_page(tracking_uri, tracker.experiment_id())}")

    def fit() -> Any:  # built inside run_tune, so a failed restore also closes the parent run
        return build_tuner(the_plan, tracker, storage, name, resume=bool(record)).fit()

    resume = shlex.join([*prog.split(), *([label] if label else []), "--resume", "--name", name,
                         *(["--storage", storage] if args.storage else [])])

    def report(results: Any) -> None:  # the command's own report, then the parent run's ranking and plots
        the_plan.report(results, tracker, folder)
        mlflow_ui.finish_parent(tracker, the_plan)

    return run_tune(tracker, fit, report, the_plan.num_trials, resume)


def build_tuner(plan: Plan, tracker: tracking.SweepTracker, storage: str, name: str, *, resume: bool) -> Any:
    from ray import tune

    trainable = runner.make_trainable(plan.spec.name, plan.resources, storage_path=storage, experiment_name=name)
    # A driver killed after it wrote the record but before Tune's first save of the experiment state leaves nothing
    # for Tune to restore: the experiment starts again under the same name and parent run (children it recorded
    # are adopted by configuration: orchestrator.recovery).
    if resume and tune.Tuner.can_restore(f"{storage}/{name}"):
        # The callback (with the parent run id) and any searcher's state come back with the experiment.
        return tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    setup = plan.setup(tracker, f"{storage}/{name}")
    setup.callback.summary_metrics = mlflow_ui.summary_metrics(plan)  # final/ and best/ metrics on each trial's run
    return tune.Tuner(
        trainable,
        param_space=setup.param_space,
        tune_config=setup.tune_config,
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[setup.callback],
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
        ),
    )


def run_tune(tracker: tracking.SweepTracker, fit: Callable[[], Any], report: Callable[[Any], None],
             expected_trials: int, resume_command: str) -> int:
    """Fit a Tuner under the tracker's parent run, report, close the run and pick the exit status.

    An interrupt leaves trials never created (grids and searchers expand lazily), so finished trials are counted
    against ``expected_trials`` rather than the length of the result grid; and it leaves running trials cut off,
    which Tune reports as TERMINATED (it does not say it was interrupted), so the child runs the callback closed as
    KILLED count too. The parent run ends FINISHED, FAILED (a trial errored) or KILLED (interrupted; the resume
    command is printed), never RUNNING.
    """
    status = "FAILED"
    try:
        results = fit()
        interrupted = (results.num_terminated + results.num_errors < max(len(results), expected_trials)
                       or tracker.cut_off_children() > 0)
        status = "KILLED" if interrupted else ("FAILED" if results.num_errors else "FINISHED")
        report(results)
    except KeyboardInterrupt:  # a second signal, or one before Tune's own handler was in place
        status = "KILLED"
    except Exception as err:  # noqa: BLE001 (Tune itself gave up: one line and the way back, not its traceback)
        if isinstance(err, cli.user_error_types()):
            raise
        lost = getattr(tracker, "lost", None)
        if lost:  # nothing more can be written; the resume closes the runs left RUNNING (recovery.Replay)
            print(f"error: {lost}; the run stopped and what it recorded before is kept; once the server is back, "
                  f"continue with: {resume_command}", file=sys.stderr)
            return 1
        tracker.end_running_children("KILLED")
        message = " ".join(str(err).split())[:300]
        print(f"error: Ray Tune stopped ({type(err).__name__}: {message}); what finished is recorded; "
              f"continue with: {resume_command}", file=sys.stderr)
    finally:
        if not getattr(tracker, "lost", None):
            tracker.end_parent(status)
    if status == "KILLED":
        print(f"interrupted; continue with: {resume_command}", file=sys.stderr)
        return cli.interrupted_status()
    return 0 if status == "FINISHED" else 1


def latest_experiment(storage: str, stem: str) -> str:
    """The newest experiment ``STEM-*`` under local ``storage`` that has a record; a user error if there is none."""
    root = Path(storage)
    candidates = [p for p in root.glob(f"{stem}-*") if (p / RECORD).is_file()] if "://" not in storage else []
    if not candidates:
        raise cli.UserError(f"nothing to resume: no '{stem}-*' experiment under {storage} (give --name)")
    return max(candidates, key=lambda p: ((p / RECORD).stat().st_mtime, p.name)).name


def completion_status(spec: registry.TrainableSpec, result: Any) -> str:
    """ERROR, OK (the declared budget was reached), partial (stopped by a scheduler or cut off by an interrupt) or
    no report (an interrupt came before the trial reported anything, e.g. while it was pending)."""
    if result.error:
        return "ERROR"
    if not result.metrics or "training_iteration" not in result.metrics:
        return "no report"  # without this check an empty result has no budget to fall short of: it read "OK"
    return "OK" if spec.is_complete(result.config or {}, result.metrics or {}) else "partial"
