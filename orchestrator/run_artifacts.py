"""What a child run gets besides its metrics and status: the path of a reported checkpoint, the files a trial leaves
(config, final checkpoint, the task's pictures), an error's text; and the store lookup MLflow would make for them.

Split from :mod:`orchestrator.tracking`, whose callback calls these from the Tune driver's loop.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def log_trial_artifacts(client: Any, run_id: str, trial: Any) -> None:
    """A finished trial's ``config.json`` and final checkpoint (with the task's artifacts) into its run."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(trial.config, indent=2, default=str))
        client.log_artifact(run_id, str(config_path))
    checkpoint = trial.checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            client.log_artifacts(run_id, path, artifact_path="checkpoint")
            log_task_artifacts(client, run_id, path)
    else:
        # A Ray Train worker group reports its checkpoint's location instead of a Tune checkpoint.
        path = (trial.last_result or {}).get("checkpoint_path")
        if path and os.path.isdir(path):
            client.log_artifacts(run_id, path, artifact_path="checkpoint")
            log_task_artifacts(client, run_id, path)


def log_task_artifacts(client: Any, run_id: str, checkpoint_dir: str, artifact_path: str = "task") -> None:
    """What the task wrote beside its checkpoint (``Task.write_artifacts``: images, tables) also at the run's
    ``task/`` (the last report's), where a user looks first, or at ``artifact_path``."""
    from trainables.context import TASK_ARTIFACTS  # the checkpoint layout's seam (imports torch: only here)

    folder = os.path.join(checkpoint_dir, TASK_ARTIFACTS)
    if os.path.isdir(folder):
        client.log_artifacts(run_id, folder, artifact_path=artifact_path)


def reported_checkpoint(trial: Any, result: Mapping[str, Any]) -> str | None:
    """The path in Tune's storage of the checkpoint reported with ``result`` (``checkpoint_dir_name``, set by Tune
    when a report carries one), as Tune's ``Checkpoint.path`` will name it; None without one."""
    name = result.get("checkpoint_dir_name")
    storage = getattr(trial, "storage", None)
    if not name or storage is None:
        return None
    return posixpath.join(storage.trial_fs_path, name)


def remember_artifact_uri(run: Any, tracking_uri: str) -> None:
    """MLflow looks a run up (``get_run``, one store query: ~2 ms of the driver's loop on sqlite) the first time an
    artifact is logged to it, only to learn its artifact URI, and then caches the repository by run id. The run we
    just created or found carries that URI: put it into MLflow's cache ourselves. The cache is MLflow-internal; where
    it is missing or the repository cannot be made, nothing happens and MLflow looks the run up as before."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.tracking._tracking_service import utils

        cache = utils._artifact_repos_cache
        databricks = tracking_uri.startswith("databricks") or run.info.artifact_uri.startswith("dbfs:")
        if run.info.run_id not in cache and not databricks:  # Databricks URIs get a profile added: MLflow's way
            if len(cache) > 1024:  # MLflow's own bound on the cache
                cache.popitem(last=False)
            cache[run.info.run_id] = get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001, S110 (an optimisation only: MLflow's own lookup still works)
        pass


def trial_error_text(trial: Any) -> str:
    for attribute in ("error_file", "pickled_error_file"):
        path = getattr(trial, attribute, None)
        if path and os.path.isfile(path) and not path.endswith(".pkl"):
            return Path(path).read_text(errors="replace")
    return str(getattr(trial, "error_msg", None) or "trial failed")
