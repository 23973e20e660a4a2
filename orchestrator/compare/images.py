"""The images trials wrote (a GAN's samples, a VAE's reconstructions, a classifier's templates), fetched from MLflow
so the HTML report shows them beside the ranking: what a generative model's number means is only clear from its
pictures. A task writes them under its run's ``task/`` artifacts (``trainables.task.Task.write_artifacts``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.compare.ranking import group_label, group_values
from orchestrator.tables import fmt_number

TASK_ARTIFACTS = "task"  # where the loop's MLflow callback logs what a task wrote (orchestrator.tracking)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class TrialImage:
    """One image file of one trial, with what the report says under it."""

    path: Path
    caption: str


def task_images(client: Any, run_id: str) -> list[str]:
    """The artifact paths of the images under the run's ``task/`` folder (sorted; empty when it wrote none)."""
    try:
        listed = client.list_artifacts(run_id, TASK_ARTIFACTS)
    except Exception:  # noqa: BLE001 (an unreachable or missing artifact store shows no images, not a failure)
        return []
    return sorted(a.path for a in listed if not a.is_dir and a.path.lower().endswith(IMAGE_SUFFIXES))


def representative_run(table: pd.DataFrame, by: Sequence[str], row: pd.Series) -> pd.Series:
    """The group's run whose images stand for it: its lowest seed (the same seed for every group, so the pictures
    are compared at equal luck), else its first run."""
    members = group_values(table, by, row)
    if "seed" in members and members["seed"].notna().any():
        members = members.sort_values("seed", kind="stable")
    return members.iloc[0]


def fetch_group_images(client: Any, table: pd.DataFrame, groups: pd.DataFrame, by: Sequence[str], value: str,
                       directory: Path, limit: int) -> list[TrialImage]:
    """For each of the first ``limit`` rows of ``groups``: its representative run's task images, downloaded into
    ``directory`` and captioned with the group, the run and its value."""
    images: list[TrialImage] = []
    for _, row in groups.head(limit).iterrows():
        run = representative_run(table, by, row)
        for artifact in task_images(client, run["run_id"]):
            local = Path(client.download_artifacts(run["run_id"], artifact, str(directory / run["run_id"])))
            caption = (f"#{int(row['rank'])} {group_label(row, by)}: {Path(artifact).name} of run "
                       f"{run.get('run_name', run['run_id'])} ({value} {fmt_number(run[value])})")
            images.append(TrialImage(local, caption))
    return images
