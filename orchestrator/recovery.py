"""Resuming after a driver that died without a word (``kill -9``, the OOM killer, a lost login node, a tracking server
that went away): MLflow is the record, and Tune's saved experiment state may be older than it.

Why it can be older (Ray 2.60, ``tune/execution/experiment_state.py``): the driver saves the experiment state (trial
statuses, their checkpoints, the searcher's state) at the end of a controller step only when
``TUNE_GLOBAL_CHECKPOINT_S`` has passed since the last save (``auto``: at least 10 s, more for a slow save), or when a
trial has registered ``CheckpointConfig.num_to_keep`` checkpoints since the last one. Our callback writes to MLflow in
the step itself. So a driver killed outright can leave, in MLflow, results, finished trials and even whole new trials
that the saved state does not have. ``Tuner.restore`` then continues from the saved state: a trial finished after the
last save runs again from its last saved checkpoint (and reports its last epochs again), one started after it runs
again from the start, and a searcher that names its own trials (``SearchGenerator``: random ids) re-suggests the same
configuration under a new id (the searcher's state was saved with the trial statuses, so it suggests the same one).

Forcing a save at every trial event would close the gap only partly (the save is the step's last act, after the
callback wrote) and costs a full state write (a remote upload on ``s3://``) per event, so the resumed run reconciles
with MLflow instead, through this :class:`Replay`:

- a run MLflow has as FINISHED is **settled**: a trial Tune runs again under it writes nothing (its metrics, end time,
  artifacts and checkpoint tag stay as recorded). Tune still hands its completion to the searcher, whose restored state
  had not seen it: the controller learns from it exactly once, as it would have without the kill;
- a reopened run (KILLED, FAILED, or left RUNNING by the killed driver) takes no report for a step it already has:
  a trial rerun from an older checkpoint logs each epoch once;
- a child run whose trial Tune's restored state does not know (created after the last save) is an orphan, adopted
  by the trial of the resumed run with the same configuration (its ``ray.trial_id`` tag is moved to the new id).

A deterministic trial reports the same values on its rerun; a nondeterministic one keeps its first recorded values
for the steps MLflow already had. What a kill costs is the compute since Tune's last save, never a record.

A tracking server that goes away mid-run is the same case, on purpose: the first write that finds it gone (after
MLflow's retries, bounded by :func:`bound_http_retries`) raises :class:`TrackingLostError` out of the Tune callback,
which stops Tune in that step, before it saves the result MLflow did not get; every later write fails at once
(:class:`GuardedClient`), and the executor prints one line with the resume command (exit 1). Going on without a record
would leave results only in Tune's files, where ``compare`` does not look; stopping loses nothing, since the resume
(once the server is back) replays what MLflow lacks and skips what it has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

PREVIOUS_TRIAL_ID_TAG = "ray.trial_id.before_resume"  # an adopted orphan's id in the killed driver's Tune run


class TrackingLostError(RuntimeError):
    """The tracking server stopped answering during a run (after MLflow's retries): the run stops, to be resumed."""


# MLflow's client retries a request 7 times with backoff factor 2 and waits 120 s for an answer: one call to a server
# that refuses connections took 246 s here (MLflow 3.17), and a sweep makes several calls per report. A driver whose
# server went away should say so within a minute; these took 33 s, and still ride out a server restart of ~30 s
# (retries after 0, 2, 4, 8 and 16 s).
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_http_retries(uri: str) -> None:
    """Apply :data:`HTTP_RETRY_DEFAULTS` for an HTTP tracking server, unless the user set those variables."""
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)


def _server_unreachable(err: Exception) -> bool:
    """MLflow's REST client gave up reaching the server (refused, reset, timed out), as opposed to an answer."""
    text = str(err)
    return text.startswith("API request to ") and ("failed with exception" in text
                                                   or "failed with timeout exception" in text)


def _why(err: Exception) -> str:
    """The root of a REST failure in a few words ("Connection refused", "timed out"), not requests' whole chain."""
    text = " ".join(str(err).split())
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return "timed out" if "timeout" in text.lower() else text[:120]


class GuardedClient:
    """An MlflowClient for an HTTP server: once a call finds the server gone (after MLflow's retries), that call and
    every later one raise :class:`TrackingLostError` at once, so the driver stops in seconds instead of spending the
    retries again on every write it still has to make."""

    def __init__(self, client: Any, tracker: Any) -> None:
        self._client, self._tracker = client, tracker

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._tracker.lost:
                raise TrackingLostError(self._tracker.lost)
            try:
                return attribute(*args, **kwargs)
            except Exception as err:
                if not _server_unreachable(err):
                    raise
                self._tracker.lost = f"the MLflow tracking server {self._tracker.tracking_uri} stopped answering " \
                                     f"({_why(err)}, on {name})"
                raise TrackingLostError(self._tracker.lost) from None

        return call


class Replay:
    """What one driver session knows about runs an earlier session wrote (empty on a fresh experiment)."""

    def __init__(self) -> None:
        self._settled: set[str] = set()  # run ids MLflow has as FINISHED before this session reopened them
        self._last_step: dict[str, int] = {}  # run id -> the highest step it already had when reopened
        self._restored: set[str] | None = None  # trial ids in Tune's restored state (None before the first step)
        self._orphans: list[Any] | None = None  # child runs of trials the restored state does not know

    def note_restored(self, trials: Iterable[Any]) -> None:
        """Called at every controller step; the first call sees exactly the trials Tune restored (new ones are
        suggested later in the step)."""
        if self._restored is None:
            self._restored = {trial.trial_id for trial in trials}

    def resume_run(self, client: Any, run: Any) -> str:
        """Continue ``run`` (an MLflow ``Run`` found for a trial): a FINISHED one stays closed and settled; any other
        is reopened, and the steps it already has are remembered."""
        run_id = run.info.run_id
        if run.info.status == "FINISHED":
            self._settled.add(run_id)
            return run_id
        self._last_step[run_id] = max((m.step for key in run.data.metrics
                                       for m in client.get_metric_history(run_id, key)), default=0)
        client.update_run(run_id, status="RUNNING")
        return run_id

    def settled(self, run_id: str) -> bool:
        return run_id in self._settled

    def recorded(self, run_id: str, result: dict[str, Any]) -> bool:
        """Whether MLflow already has this report of ``run_id`` (its run is settled, or it had the report's step)."""
        if run_id in self._settled:
            return True
        if run_id not in self._last_step:  # a run this session started: nothing of it was recorded before
            return False
        return int(result.get("training_iteration", 0)) <= self._last_step[run_id]

    def adopt_orphan(self, tracker: Any, trial: Any) -> list[Any]:
        """The orphan child run of ``tracker``'s parent with ``trial``'s configuration, retagged with its id (a
        one-element list, as ``search_runs`` returns), or ``[]``. An orphan's trial id is none of the trials Tune
        restored (it ran after Tune's last save); in a fresh experiment the first trial finds no child runs at all."""
        from orchestrator.tracking import TRIAL_ID_TAG, flatten

        if self._restored is None:  # before Tune's first step: nothing to compare with
            return []
        client = tracker.client
        if self._orphans is None:  # found once: orphans come only from before the resume
            self._orphans = [run for run in client.search_runs(
                [tracker.experiment_id()], max_results=10_000,
                filter_string=f"tags.mlflow.parentRunId = '{tracker.parent_run_id}'",
            ) if run.data.tags.get(TRIAL_ID_TAG) not in self._restored]
        params = {key: value[:6000] for key, value in flatten(trial.config).items()}  # as SweepTracker logs them
        for run in self._orphans:
            if run.data.params == params:
                self._orphans.remove(run)  # taken: no other trial adopts it
                client.set_tag(run.info.run_id, PREVIOUS_TRIAL_ID_TAG, run.data.tags.get(TRIAL_ID_TAG, ""))
                client.set_tag(run.info.run_id, TRIAL_ID_TAG, trial.trial_id)
                return [run]
        return []
