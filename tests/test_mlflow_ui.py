"""What a researcher sees in MLflow's own UI (issue 19), checked in a real browser: a tiny sweep into a sqlite store,
``mlflow server`` on it, and headless Chromium on the experiment's page.

Set ``DEEPREPRO_WRITE_SCREENSHOT=docs/figures/mlflow_runs.png`` to also save the runs page for the README (the test
run itself never rewrites the committed picture).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import mlflow_ui
from tests.browser import CHROMIUM, Chromium
from tests.conftest import REPO, run_gated_cli
from tests.services import LOOPBACK, free_port, start_mlflow_server, stop

SPACE = "trainable: gated\nconfig: {epochs: 3}\nseeds: 2\nspace:\n  x: {grid: [0, 1, 2]}\n"
CHILDREN = [f"x={x},seed={seed}" for x in (0, 1, 2) for seed in (0, 1)]  # the child runs' names: swept values
SCREENSHOT_ENV = "DEEPREPRO_WRITE_SCREENSHOT"

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[dict[str, Any]]:
    """A 6-trial sweep of ``gated`` (3 settings x 2 seeds, 3 epochs) into a new sqlite store, then ``mlflow server``
    on that store (127.0.0.1 only; stopped by its process group)."""
    folder = tmp_path_factory.mktemp("mlflow_ui")
    (folder / "ui_sweep.yaml").write_text(SPACE)
    db = folder / "server.db"  # the file tests.services.start_mlflow_server serves
    sweep = run_gated_cli("orchestrator.sweep", [str(folder / "ui_sweep.yaml"), "--address", ray_address,
                                                 "--tracking-uri", f"sqlite:///{db}", "--storage",
                                                 str(folder / "ray_results")], folder, timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("ui_sweep")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    port = free_port()
    server = start_mlflow_server(folder, port)
    try:
        yield {"folder": folder, "client": client, "experiment": experiment, "parent": parent, "runs": runs,
               "url": f"http://{LOOPBACK}:{port}", "stdout": sweep.stdout}
    finally:
        stop(server)


def test_the_sweep_marks_its_experiment_and_explains_its_parent_run(served: dict[str, Any]) -> None:
    experiment, parent = served["experiment"], served["parent"]
    assert experiment.tags.get(mlflow_ui.EXPERIMENT_KIND_TAG) == mlflow_ui.MODEL_TRAINING
    # The link the sweep prints opens the runs table (MLflow 3.17 picks its start page from workflowType).
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in served["stdout"]
    note = parent.data.tags[mlflow_ui.NOTE_TAG]
    assert "python -m orchestrator.sweep" in note and "--address" in note  # the command line
    assert "  x: {grid: [0, 1, 2]}" in note and "seeds: 2" in note  # the search space
    assert "1 CPU" in note  # the resources
    results = note.split(mlflow_ui.RESULTS_HEADING, 1)[1]
    # Ranked best first (gated: val_error = x / 10 + 1 / epoch, the same for both seeds): mean ± std over 2 seeds.
    rows = [line for line in results.splitlines() if line.startswith("| ") and "rank" not in line]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "1", "2"], results
    assert rows[0].split("|")[3].strip() == "0.3333 ± 0" and rows[0].split("|")[4].strip() == "2", results
    artifacts = {a.path for a in served["client"].list_artifacts(parent.info.run_id, mlflow_ui.PLOTS)}
    assert {"plots/learning_curves.png", "plots/val_error_vs_x.png"} <= artifacts


def test_child_runs_carry_final_and_best_values_of_the_ranked_metric(served: dict[str, Any]) -> None:
    children = [r for r in served["runs"] if r.data.tags.get("mlflow.parentRunId") == served["parent"].info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(CHILDREN)
    for run in children:
        x = int(run.data.params["x"])
        assert run.data.metrics["final/val_error"] == pytest.approx(x / 10 + 1 / 3)
        assert run.data.metrics["best/val_error"] == pytest.approx(x / 10 + 1 / 3)  # falls every epoch


def test_an_existing_experiment_is_marked_when_a_sweep_writes_to_it(tmp_path: Path) -> None:
    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("old")  # made before this project tagged its experiments
    other = client.create_experiment("other", tags={mlflow_ui.EXPERIMENT_KIND_TAG: "genai_development"})
    for name, experiment_id in (("old", old), ("other", other), ("new", None)):
        assert SweepTracker(uri, name).experiment_id() == (experiment_id or client.get_experiment_by_name(name)
                                                           .experiment_id)
    kinds = {name: client.get_experiment_by_name(name).tags.get(mlflow_ui.EXPERIMENT_KIND_TAG)
             for name in ("old", "other", "new")}
    # Another tool's experiment keeps the kind it was given.
    assert kinds == {"old": mlflow_ui.MODEL_TRAINING, "other": "genai_development", "new": mlflow_ui.MODEL_TRAINING}


def test_best_is_taken_in_the_declared_direction_and_final_at_the_last_step(tmp_path: Path) -> None:
    """Reports of err 0.5, 0.1, 0.3 and acc 0.5, 0.9, 0.7, each with its final/ and best/ values in the report's own
    batch (as the callback writes them): the run's latest values are the last report's and the best report's."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("e")).info.run_id
    watched, best = [("err", "min"), ("acc", "max")], {}
    for step, (err, acc) in enumerate([(0.5, 0.5), (0.1, 0.9), (0.3, 0.7)], start=1):
        client.log_batch(run, metrics=mlflow_ui.final_and_best(watched, {"err": err, "acc": acc}, best, step, 0))
    metrics = client.get_run(run).data.metrics
    assert (metrics["final/err"], metrics["best/err"], metrics["final/acc"], metrics["best/acc"]) == (0.3, 0.1, 0.7,
                                                                                                      0.9)
    assert [m.value for m in client.get_metric_history(run, "best/err")] == [0.5, 0.1, 0.1]
    # A resumed run continues from the best it recorded (a worse report does not replace it), NaN is skipped.
    resumed = mlflow_ui.recorded_best(watched, metrics)
    assert resumed == {"err": 0.1, "acc": 0.9}
    assert mlflow_ui.final_and_best(watched, {"err": 0.2, "acc": float("nan")}, resumed, 4, 0)[1].value == 0.1


# JavaScript run in the page. TEXTS: the page's text nodes; the names among %s that one of them shows whole (run
# names are links, artifact names tree nodes).
TEXTS = """(() => { const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), out = [];
    while (walk.nextNode()) out.push(walk.currentNode); return out; })()"""
NAMES_SHOWN = "(names => names.filter(name => " + TEXTS + ".some(t => t.textContent.trim() === name)))(%s)"
# Tick these entries of the runs table's column chooser (params and metrics by name); returns those found.
TICK_COLUMNS = """(names => names.filter(name => {
    const node = Array.from(document.querySelectorAll('[role=tree] [title], .du-bois-light-tree-treenode [title]'))
        .find(e => e.getAttribute('title') === name);
    const box = node && node.closest('.du-bois-light-tree-treenode').querySelector('.du-bois-light-tree-checkbox');
    if (box) box.click();
    return Boolean(box);
}))(%s)"""
CLICK = "(e => (e && e.click(), Boolean(e)))(%s)"


@needs_chromium
def test_the_experiment_page_shows_the_runs_table_the_children_and_the_plots(served: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    experiment, parent = served["experiment"], served["parent"]
    parent_name = parent.info.run_name
    with Chromium(tmp_path / "profile", timeout=120, window=(1600, 900)) as browser:
        # 1. The page the sweep links to is the runs table with the sweep's parent row, not the GenAI overview.
        browser.navigate(mlflow_ui.runs_page(served["url"], experiment.experiment_id))
        browser.wait_for(f"{NAMES_SHOWN % json.dumps([parent_name])}.length === 1", "the parent run's row")
        assert f"/experiments/{experiment.experiment_id}/runs" in browser.evaluate("location.hash")
        text = browser.evaluate("document.body.innerText")
        assert "Run Name" in text and "No data available" not in text, text[:2000]
        # 2. The column chooser offers the trials' final/best values (and the swept params): show them.
        browser.evaluate(CLICK % "document.querySelector('button[aria-label=Close]')")  # the assistant panel
        assert browser.evaluate(CLICK % "document.querySelector('[data-testid=column-selection-dropdown]')")
        wanted = ["x", "seed", "final/val_error", "best/val_error"]
        browser.wait_for(f"{TICK_COLUMNS % json.dumps(wanted)}.length === {len(wanted)}", "the column chooser")
        browser.evaluate(CLICK % "document.querySelector('[data-testid=column-selection-dropdown]')")
        # 3. Expanded, the parent row shows its children, named by their swept values.
        assert browser.evaluate(CLICK % "document.querySelector('button[data-component-id*=runnamecellrenderer]')")
        browser.wait_for(f"{NAMES_SHOWN % json.dumps(CHILDREN)}.length === {len(CHILDREN)}", "the child runs")
        columns = browser.evaluate("Array.from(document.querySelectorAll('.ag-header-cell[col-id]'), "
                                   "e => e.getAttribute('col-id'))")
        assert {"metrics.`final/val_error`", "metrics.`best/val_error`", "params.`x`"} <= set(columns), columns
        if os.environ.get(SCREENSHOT_ENV):
            browser.screenshot(REPO / os.environ[SCREENSHOT_ENV])

        # 4. The parent run's page: its description with the ranked settings, and its plots among its artifacts.
        run_page = f"{served['url']}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
        browser.navigate(run_page)
        browser.wait_for("document.body.innerText.includes('val_error (mean ± std)')", "the ranked settings")
        assert "Search space" in browser.evaluate("document.body.innerText")
        browser.navigate(f"{run_page}/artifacts")
        browser.wait_for(f"{NAMES_SHOWN % json.dumps([mlflow_ui.PLOTS])}.length === 1", "the plots folder")
        assert browser.evaluate(CLICK % f"({TEXTS}).find(t => t.textContent.trim() === '{mlflow_ui.PLOTS}')"
                                        ".parentElement")
        plots = ["learning_curves.png", "val_error_vs_x.png"]
        browser.wait_for(f"{NAMES_SHOWN % json.dumps(plots)}.length === {len(plots)}", "the plots")
