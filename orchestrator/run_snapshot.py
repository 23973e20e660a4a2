"""The runs behind docs/RESULTS.md's generated parts, as a small reviewable JSON file (``repro/results_store.json``).

``python -m orchestrator.repro export`` copies, for every claim, the runs a report reads (the newest code version's
finished runs at the largest budget: :class:`orchestrator.results_doc.Checked`) out of a tracking store: the parent
runs with their tags, and each sample run with its status, params and the metrics the claim reads (with their
histories where it reads the validation-selected report). ``load`` writes such a file into an MLflow store, so
``report --snapshot FILE`` rebuilds the document through the same MLflow reads as from a live store; CI checks that
the committed RESULTS.md is what the committed snapshot gives. A JSON file rather than a committed sqlite store: it
diffs in review and does not depend on MLflow's schema version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator import claim_runs, claims
from orchestrator.claims import Claim

FORMAT = 2
# what identifies a parent run and says where it was made; verdicts are not kept: the report decides again
IDENTITY_TAGS = ("repro.claims", "repro.budget", "repro.key", "repro.code", "repro.command", "repro.machine",
                 "repro.uncommitted", "mlflow.source.git.commit")
SNAPSHOT = Path(__file__).resolve().parents[1] / "repro" / "results_store.json"


def _metrics_read(claim: Claim) -> list[str]:
    names = set(claim_runs.compared_metrics(claim))
    if claim.read_at == "best":
        names = {f"best/{m}" for m in names}
    if claim.read_at == "selected":
        names.add(claim.select_metric)
    return sorted(names)


def _params_read(claim: Claim) -> set[str]:
    """The params (and ``tags.X``) a verdict selects and pairs on: the arms' keys, a trend's swept key, the pairing
    key."""
    spec = claim.comparison
    keys = {*getattr(spec, "a", {}), *getattr(spec, "b", {}), *getattr(spec, "where", {}), "seed"}
    keys |= {key for key in (getattr(spec, "over", None), getattr(spec, "pair_by", None)) if key}
    return keys


def _run(store: Any, run: Any, metrics: list[str], histories: bool, params: set[str] | None) -> dict[str, Any]:
    kept = {k: v for k, v in run.data.params.items() if params is None or k in params}
    out = {"status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
           "params": dict(sorted(kept.items())), "metrics": {}}
    tags = {k: run.data.tags[k.removeprefix("tags.")] for k in sorted(params or ())
            if k.startswith("tags.") and k.removeprefix("tags.") in run.data.tags}
    if tags:
        out["tags"] = {k.removeprefix("tags."): v for k, v in tags.items()}
    for name in metrics:
        if name not in run.data.metrics:
            continue
        if histories:
            points = store.get_metric_history(run.info.run_id, name)
            out["metrics"][name] = [[m.step, m.value, m.timestamp] for m in sorted(points, key=lambda m: m.step)]
        else:
            out["metrics"][name] = run.data.metrics[name]
    return out


def export(store: Any, path: Path, budget: str | None = None) -> list[str]:
    """Write (merge into) the snapshot at ``path`` the reported runs of every claim ``store`` holds; returns the
    claims written. A parent run shared by claims is written once, with what each of them reads; a run the store
    has no newer copy of keeps its entry from the file."""
    from orchestrator import results_doc

    kept = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    chosen: dict[str, dict[str, Any]] = {}  # parent run id -> the parent and what its claims read
    written = []
    for name, claim in claims.all_claims().items():
        checked = results_doc.Checked(store, claim, budget)
        for parent in checked.parents:
            need = chosen.setdefault(parent.info.run_id, {"run": parent, "metrics": set(), "params": set(),
                                                          "histories": False, "search": False})
            need["metrics"] |= set(_metrics_read(claim))
            need["params"] |= _params_read(claim)
            need["histories"] |= claim.read_at == "selected"
            need["search"] |= claim.unit == "search"
        if checked.parents:
            written.append(name)
    entries = []
    for need in chosen.values():
        parent, metrics, histories = need["run"], sorted(need["metrics"]), need["histories"]
        entry = _run(store, parent, metrics if need["search"] else [], histories,
                     need["params"] if need["search"] else None)
        entry["experiment"] = store.get_experiment(parent.info.experiment_id).name
        entry["tags"] = {k: v for k, v in sorted(parent.data.tags.items()) if k in IDENTITY_TAGS}
        children = store.search_runs([parent.info.experiment_id], max_results=10_000,
                                     filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                     order_by=["attributes.start_time ASC"])
        entry["children"] = [_run(store, child, metrics, histories, need["params"]) for child in children]
        entries.append(entry)
    keys = {(e["tags"].get("repro.key"), e["tags"].get("repro.code")) for e in entries}
    entries += [e for e in kept if (e["tags"].get("repro.key"), e["tags"].get("repro.code")) not in keys]
    entries.sort(key=lambda e: (e["experiment"], e["start_time"]))
    path.write_text(json.dumps({"format": FORMAT, "runs": entries}, indent=1) + "\n")
    return written


def _write(store: Any, experiment_id: str, run: dict[str, Any], tags: dict[str, str]) -> str:
    from mlflow.entities import Metric, Param

    created = store.create_run(experiment_id, start_time=run["start_time"], tags=tags)
    run_id = created.info.run_id
    points = []
    for name, value in run["metrics"].items():
        history = value if isinstance(value, list) else [[0, value, run["end_time"] or run["start_time"]]]
        points += [Metric(name, float(v), int(t), int(s)) for s, v, t in history]
    params = [Param(k, str(v)) for k, v in run["params"].items()]
    for start in range(0, max(len(points), len(params)), 100):  # MLflow's batch limits: 100 params, 1000 metrics
        store.log_batch(run_id, metrics=points[start:start + 100], params=params[start:start + 100])
    store.set_terminated(run_id, run["status"], end_time=run["end_time"])
    return run_id


def load(path: Path, store: Any) -> int:
    """Write the snapshot at ``path`` into the (empty) tracking ``store``; returns the number of runs written."""
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise claims.ClaimError(f"{path}: snapshot format {data.get('format')!r}, this code reads {FORMAT}")
    count = 0
    for parent in data["runs"]:
        experiment = store.get_experiment_by_name(parent["experiment"])
        experiment_id = experiment.experiment_id if experiment else store.create_experiment(parent["experiment"])
        parent_id = _write(store, experiment_id, parent, parent["tags"])
        count += 1
        for child in parent.get("children", []):
            _write(store, experiment_id, child, {**child.get("tags", {}), "mlflow.parentRunId": parent_id})
            count += 1
    return count
