"""MLflow tracking: one parent run per sweep, one nested child run per trial, written only by the Tune driver.

Workers never talk to MLflow: the sqlite store stays safe from concurrent writers, and on a cluster only the head
(where the driver runs) must reach the tracking server. The child runs carry ``mlflow.parentRunId`` so the MLflow UI
nests them under the sweep.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator import mlflow_ui, recovery, run_artifacts

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TRIAL_ID_TAG = "ray.trial_id"
NODE_TAG = "ray.node_id"  # the Ray node of the trial's latest report
CHECKPOINT_TAG = "checkpoint"  # the trial's latest checkpoint (its path in Tune's storage)
NODES_TAG = "ray.nodes"  # every node the trial reported from, in order (more than one after a lost node's retry)
# Tune's own bookkeeping keys: not metrics of the method.
_NOT_METRICS = {
    "training_iteration", "timestamp", "pid", "done", "time_this_iter_s", "time_since_restore",
    "iterations_since_restore", "should_checkpoint", "checkpoint_dir_name", "checkpoint_path",
}


# Each report's task artifacts, kept: <TASK_HISTORY>/epoch_NNN/ (``task/`` holds the last report's).
TASK_HISTORY = "task_history"


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, unwritable file). One readable line."""


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own default ``sqlite:///mlflow.db`` (cwd).

    A relative sqlite path is made absolute, so Ray processes with another working directory write the same file.
    """
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str(Path.cwd() / uri[len(prefix):])
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (and write nothing) when an HTTP tracking server does not answer; MLflow's client would retry
    for minutes first."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user-given server)
                if response.status >= 400:
                    raise TrackingError(f"MLflow tracking server {uri} answered HTTP {response.status} on /health")
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"cannot write the MLflow sqlite store {uri}: {folder} is not a writable folder")


def open_client(uri: str, attempts: int = 6) -> Any:
    """An MlflowClient whose store exists. A new sqlite store creates its tables on first use, and two processes
    doing that at once (a sweep and a ``compare``, or a test polling the store) collide on "table ... already
    exists"; the loser waits for the winner's schema instead of failing the command."""
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import OperationalError

    for attempt in range(attempts):
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # opens the store: creates a new sqlite store's tables
            return client
        except OperationalError as err:
            if "already exists" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the checkout the code runs from, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b": "value"}`` strings, the way MLflow params are stored."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


class SweepTracker:
    """The parent run of one sweep, and the client every child run is written with."""

    lost: str | None = None  # why the tracking server is gone, once a call found it gone (recovery.GuardedClient)

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.parent_run_id: str | None = None
        self._client: Any = None
        self._experiment_id: str | None = None
        # The parent run this object created (not reopened): no child run of it can predate this process.
        self.new_parent_run_id: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = open_client(self.tracking_uri)
            if self.tracking_uri.startswith(("http://", "https://")):
                self._client = recovery.GuardedClient(self._client, self)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; an open sqlite engine does not pickle (nor should it).
        # After a restore the experiment id is looked up again (the store may have changed in between), the parent
        # counts as reopened (its child runs are searched for), and a lost server is asked again.
        return {**self.__dict__, "_client": None, "_experiment_id": None, "new_parent_run_id": None, "lost": None}

    def experiment_id(self) -> str:
        # Looked up once: the callback needs it twice per trial, and each lookup was a store query (~1 ms of the
        # driver loop's time per call on sqlite; bench/bookkeeping.py).
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            self._experiment_id = (experiment.experiment_id if experiment is not None
                                   else self.client.create_experiment(self.experiment_name))
            mlflow_ui.mark_model_training(self.client, self._experiment_id, experiment)  # the UI's runs view
        return self._experiment_id

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags))
        self.parent_run_id = self.new_parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, flatten(params))
        return self.parent_run_id

    def start_recorded_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str], *,
                              record_path: str, argv: list[str]) -> str:
        """Start the parent run (tagged with the git commit) and write the record a ``--resume`` reads back."""
        from orchestrator.cluster import write_record

        tags = dict(tags)
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        run_id = self.start_parent(run_name, params, tags)
        write_record(record_path, {"parent_run_id": run_id, "tracking_uri": self.tracking_uri,
                                   "mlflow_experiment": self.experiment_name, "argv": argv})
        return run_id

    def reopen_parent(self, run_id: str) -> None:
        self.parent_run_id = run_id
        self.client.update_run(run_id, status="RUNNING")

    def close_stale_children(self) -> int:
        """End as KILLED every child run a previous driver left RUNNING (it was killed: ``kill -9``, a lost node, a
        tracking server that went away), before a resume starts; returns how many. Tune reopens the runs of the trials
        it continues (:meth:`MlflowTrialCallback.run_id`); the others must not stay RUNNING for ever."""
        return self.end_running_children("KILLED")

    def cut_off_children(self) -> int:
        """How many child runs ended KILLED: trials an interrupt cut off (Tune itself does not say; see
        :meth:`MlflowTrialCallback.on_experiment_end`). A resume reopens them."""
        if self.parent_run_id is None:
            return 0
        runs = self.client.search_runs(
            [self.experiment_id()], max_results=1,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and attributes.status = 'KILLED'",
        )
        return len(runs)

    def end_running_children(self, status: str) -> int:
        """End every child run still RUNNING as ``status``: the driver stopped under them (Tune itself failed), so
        no callback will; a resume reopens them."""
        if self.parent_run_id is None:
            return 0
        runs = self.client.search_runs(
            [self.experiment_id()], max_results=10_000,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, status=status)
        return len(runs)

    def end_parent(self, status: str) -> None:
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            self.client.log_batch(run_id, params=items[start:start + 100])


class MlflowTrialCallback(Callback):
    """A Tune callback that mirrors every trial into a nested MLflow child run of the sweep's parent run.

    Child runs are found again by their ``ray.trial_id`` tag, so a resumed sweep continues the same runs.
    A trial that errors ends FAILED; one still running when the sweep is interrupted ends KILLED.
    """

    def __init__(self, tracker: SweepTracker, tags: Mapping[str, str] | None = None,
                 swept_keys: list[str] | None = None) -> None:
        self.tracker = tracker
        self.tags = dict(tags or {})
        self.swept_keys = list(swept_keys or [])
        self._runs: dict[str, str] = {}
        self._closed: set[str] = set()
        self._node_history: dict[str, list[str]] = {}
        self._tagged: dict[str, str] = {}  # run id -> the checkpoint path its `checkpoint` tag has (this session)
        self.summary_metrics: list[tuple[str, str]] = []  # (metric, min|max) with final/ and best/ values per run
        self._best: dict[str, dict[str, float]] = {}  # run id -> metric -> best so far
        self.failed: list[str] = []
        self._replay = recovery.Replay()  # a resume's view of what MLflow already has (see orchestrator.recovery)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_runs": {}, "_closed": set(), "_node_history": {}, "_tagged": {}, "_best": {},
                "_replay": recovery.Replay()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A callback pickled by an older version (before the replay or node tags existed) resumes too.
        self.__dict__.update({"_replay": recovery.Replay(), "_node_history": {}, "_tagged": {}, "_best": {},
                              "summary_metrics": [], **state})

    # -- runs ------------------------------------------------------------------------------------------------
    def run_id(self, trial: Any) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client, parent = self.tracker.client, self.tracker.parent_run_id
        # Only a reopened or restored parent (a resume) can have this trial's run already. A new parent's children
        # are all in self._runs, so a new sweep skips the store query, which grows with the store's size.
        fresh = parent is not None and parent == self.tracker.new_parent_run_id
        existing = [] if fresh else client.search_runs(
            [self.tracker.experiment_id()],
            filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`{TRIAL_ID_TAG}` = '{trial.trial_id}'",
            max_results=1,
        ) or self._replay.adopt_orphan(self.tracker, trial)
        if existing:
            # A resumed trial continues its run; what MLflow already has is not written again (recovery.Replay).
            run_id = self._replay.resume_run(client, existing[0])
            run_artifacts.remember_artifact_uri(existing[0], self.tracker.tracking_uri)
            recorded = existing[0].data.tags.get(NODES_TAG, "")
            self._node_history[run_id] = [node for node in recorded.split(",") if node]
            self._best[run_id] = mlflow_ui.recorded_best(self.summary_metrics, existing[0].data.metrics)
        else:
            swept = ",".join(f"{k}={trial.config.get(k)}" for k in self.swept_keys)
            tags = {**self.tags, "mlflow.parentRunId": parent, TRIAL_ID_TAG: trial.trial_id,
                    "ray.trial_name": str(trial), "swept": swept}
            run = client.create_run(self.tracker.experiment_id(), run_name=swept or str(trial), tags=tags)
            run_id = run.info.run_id
            run_artifacts.remember_artifact_uri(run, self.tracker.tracking_uri)
            self.tracker._log_params(run_id, flatten(trial.config))
        self._runs[trial.trial_id] = run_id
        return run_id

    # -- Tune hooks --------------------------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._replay.note_restored(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric, RunTag

        if self._replay.recorded(self.run_id(trial), result):
            return
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in result.items()
            if key not in _NOT_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        run_id = self.run_id(trial)
        metrics += mlflow_ui.final_and_best(self.summary_metrics, result, self._best.setdefault(run_id, {}), step, now)
        tags = self._node_tags(run_id, result)
        checkpoint = run_artifacts.reported_checkpoint(trial, result)
        if checkpoint is not None:
            # The report's checkpoint tag rides in the same log_batch (one store call a report less, ~2 ms of the
            # driver's loop on sqlite; bench/bookkeeping.py). The trial process persisted the checkpoint into Tune's
            # storage before it reported, so the path exists now; Tune registers it later, when the trial actor
            # answers its save request (on_checkpoint). A driver killed in between resumes from Tune's older
            # checkpoint and reruns this step, which MLflow already has: recovery.Replay skips it, and the rerun
            # writes its checkpoint to the same path (Tune's restored checkpoint index).
            tags.append(RunTag(CHECKPOINT_TAG, checkpoint))
            self._tagged[run_id] = checkpoint
        # Synchronous on purpose: MLflow's async logging (synchronous=False) would leave a report only in this
        # process's queue while Tune goes on, and Tune writes its experiment state at the end of the same step with no
        # callback hook before the write (Callback.get_state runs after the state file is written). A kill -9 then
        # would lose a result Tune has saved as done, which a resume never reruns.
        self.tracker.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # Where the trial's latest checkpoint is (play/compare can find it from MLflow): usually written already with
        # the report's metrics (on_trial_result); only a checkpoint Tune registers under another path is tagged here.
        # Interrupt tests wait for this tag: the report's metrics and its checkpoint are in MLflow.
        run_id = self.run_id(trial)
        if self._replay.recorded(run_id, trial.last_result or {}):
            return
        if self._tagged.get(run_id) != str(checkpoint.path):
            self.tracker.client.set_tag(run_id, CHECKPOINT_TAG, str(checkpoint.path))
        # What the task drew at this report (a GAN's samples), kept per epoch: training's pictures over time.
        if getattr(getattr(checkpoint, "filesystem", None), "type_name", "local") == "local":
            step = int((trial.last_result or {}).get("training_iteration", 0))
            run_artifacts.log_task_artifacts(self.tracker.client, run_id, str(checkpoint.path),
                                             artifact_path=f"{TASK_HISTORY}/epoch_{step:03d}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._replay.settled(self.run_id(trial)):
            self._finish(self.run_id(trial), trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        if self._replay.settled(run_id):
            return
        error = run_artifacts.trial_error_text(trial)
        self.tracker.client.set_tag(run_id, "error", error[-4000:])
        self._finish(run_id, trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A run Tune never announced as complete or errored was cut off by an interrupt: it must not stay RUNNING.
        # Tune's status is not enough here: with reused actors, the shutdown after Ctrl-C marks a running trial
        # TERMINATED without on_trial_complete, and the saved experiment state still has it unfinished (a resume
        # continues it from its checkpoint and this callback closes its run then).
        if self.tracker.lost:  # nothing can be written: the runs stay RUNNING until the resume closes them
            return
        for trial in trials:
            run_id = self._runs.get(trial.trial_id)
            if run_id is None or run_id in self._closed or self._replay.settled(run_id):
                continue
            if trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
            else:
                self._close(run_id, "KILLED")

    # -- helpers -------------------------------------------------------------------------------------------------
    def _node_tags(self, run_id: str, result: Mapping[str, Any]) -> list[Any]:
        """The run's node tags when the report comes from another node than the last one (a trial's first report, or
        its first after a retry on another node): where each trial ran, for users and the cluster tests. Written in
        the report's own ``log_batch``: no store call of its own."""
        from mlflow.entities import RunTag

        from trainables.context import NODE_ID_KEY

        node = result.get(NODE_ID_KEY)
        history = self._node_history.setdefault(run_id, [])
        if not node or (history and history[-1] == node):
            return []
        history.append(node)
        return [RunTag(NODE_TAG, node), RunTag(NODES_TAG, ",".join(history))]

    def _finish(self, run_id: str, trial: Any, status: str) -> None:
        """Upload the trial's artifacts and end its run with ``status``. A failed upload (disk full, store gone,
        permissions) ends the run FAILED with the reason in its ``error`` tag: its record is incomplete, and an
        exception here would leave the run RUNNING (or KILLED at the experiment's end). The sweep goes on."""
        try:
            run_artifacts.log_trial_artifacts(self.tracker.client, run_id, trial)
        except recovery.TrackingLostError:
            raise  # not this run's fault: the whole run stops (executor.run_tune)
        except Exception as err:  # noqa: BLE001 (whatever the artifact store raises, the run must be closed)
            status = "FAILED"
            message = f"artifact upload failed: {type(err).__name__}: {err}"
            print(f"warning: trial {trial.trial_id}: {message}", file=sys.stderr)
            with contextlib.suppress(Exception):  # the tag is a courtesy; closing the run is what matters
                self.tracker.client.set_tag(run_id, "error", message[-4000:])
        self._close(run_id, status)
        if status == "FAILED":
            self.failed.append(trial.trial_id)

    def _close(self, run_id: str, status: str) -> None:
        self.tracker.client.set_terminated(run_id, status=status)
        self._closed.add(run_id)
