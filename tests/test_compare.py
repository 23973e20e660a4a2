"""`python -m orchestrator.compare` against real MLflow stores: runs with known numbers logged through MLflow's API
(a sweep's parent + nested children over seeds; an architecture search's trials), the HTML report in headless
Chromium, and the same table through an `mlflow server` over REST."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import PIL.Image
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator import cli, compare, stats
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, render_in_chromium
from tests.conftest import cli_env, run_cli
from trainables import registry

# Final val_error of each (p_L, sd_schedule) over seeds 0, 1, 2. Ranked by mean (min): (0.5, linear) 0.12,
# (1.0, linear) 0.17, (0.5, uniform) 0.23, (1.0, uniform) 0.32. Top vs runner-up per seed: -0.05, -0.04, -0.06.
FINAL = {
    ("0.5", "linear"): [0.10, 0.12, 0.14],
    ("0.5", "uniform"): [0.20, 0.22, 0.27],
    ("1.0", "linear"): [0.15, 0.16, 0.20],
    ("1.0", "uniform"): [0.30, 0.31, 0.35],
}
# Architecture-search trials: (accuracy, latency_ms). Front: t0, t1, t2, t5 (t3, t4, t6 are dominated).
NAS = [(0.90, 10.0), (0.92, 20.0), (0.95, 40.0), (0.89, 15.0), (0.91, 25.0), (0.96, 80.0), (0.94, 50.0)]
NAS_FRONT = {"t0", "t1", "t2", "t5"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def history(final: float, seed: int) -> list[float]:
    """val_error at epochs 1, 2, 3: ends at ``final``; seed 1 dips 0.05 below it at epoch 2 (so --at best differs)."""
    return [final + 0.2, final - (0.05 if seed == 1 else -0.01), final]


def log_run(client: MlflowClient, experiment_id: str, name: str, params: dict, metrics: dict[str, list[float]],
            tags: dict, status: str = "FINISHED") -> str:
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)) for k, v in params.items()],
        metrics=[Metric(k, v, now + step, step) for k, values in metrics.items()
                 for step, v in enumerate(values, start=1)],
    )
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sqlite store like the sweep writes: experiment toy_sd (a parent run, 12 nested trials over 3 seeds and one
    FAILED trial) and toy_nas (a parent run, 7 architecture trials without a swept tag)."""
    root = tmp_path_factory.mktemp("compare_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    sd = client.create_experiment("toy_sd", artifact_location=str(root / "artifacts" / "toy_sd"))
    parent = client.create_run(sd, run_name="toy_sd-20261122-120000", tags={
        "trainable": "resnet", "search_space": "toy_sd", "mlflow.source.git.commit": COMMIT,
        "command": "python -m orchestrator.sweep toy_sd --seeds 3"}).info.run_id
    client.log_batch(parent, params=[Param("metric", "val_error"), Param("space", "toy_sd"), Param("depth", "8")])
    runs = {}
    for (p_L, schedule), finals in FINAL.items():
        for seed, final in enumerate(finals):
            swept = f"p_L={p_L},sd_schedule={schedule},seed={seed}"
            runs[(p_L, schedule, seed)] = log_run(
                client, sd, swept, {"p_L": p_L, "sd_schedule": schedule, "seed": seed, "depth": 8, "epochs": 3},
                {"val_error": history(final, seed), "train_loss": [1.0, 0.5, 0.25]},
                {"mlflow.parentRunId": parent, "swept": swept, "trainable": "resnet", "search_space": "toy_sd"})
    # What a task writes (a GAN's samples): on seed 0 of two groups, so the report shows two pictures.
    for p_L, schedule in (("0.5", "linear"), ("1.0", "uniform")):
        picture = root / f"samples_{p_L}_{schedule}" / "samples.png"
        picture.parent.mkdir()
        noise = np.random.default_rng(len(schedule)).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        PIL.Image.fromarray(noise).save(picture)
        client.log_artifact(runs[(p_L, schedule, 0)], str(picture), artifact_path="task")
    # A crashed trial with a great number: it must not win.
    log_run(client, sd, "p_L=0.5,sd_schedule=linear,seed=3",
            {"p_L": "0.5", "sd_schedule": "linear", "seed": 3, "depth": 8, "epochs": 3}, {"val_error": [0.01]},
            {"mlflow.parentRunId": parent, "swept": "p_L=0.5,sd_schedule=linear,seed=3"}, status="FAILED")
    client.set_terminated(parent, status="FINISHED")

    nas = client.create_experiment("toy_nas", artifact_location=str(root / "artifacts" / "toy_nas"))
    nas_parent = client.create_run(nas, run_name="toy_nas-20261122-130000",
                                   tags={"command": "python -m orchestrator.nas toy"}).info.run_id
    client.log_batch(nas_parent, params=[Param("metric", "reward")])
    for i, (accuracy, latency) in enumerate(NAS):
        reward = accuracy * (latency / 30.0) ** -0.07  # MnasNet's ACC * (LAT / T) ** w
        log_run(client, nas, f"t{i}", {"op0": f"conv{i}", "op1": "sep3" if i % 2 else "max", "epochs": 1},
                {"accuracy": [accuracy], "latency_ms": [latency], "reward": [reward]},
                {"mlflow.parentRunId": nas_parent})
    client.set_terminated(nas_parent, status="FINISHED")
    return {"root": root, "uri": uri, "db": root / "mlflow.db", "parent": parent, "nas_parent": nas_parent,
            "runs": runs}


def compare_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.run(compare.main, args)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------------------
def test_grouping_aggregation_and_ranking_on_known_numbers(store: dict) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    (experiment,) = compare.resolve_experiments(client, ["toy_sd"])
    parents, trials = compare.split_runs(compare.read_runs(store["uri"], [experiment.experiment_id]),
                                         experiment_names={experiment.experiment_id: "toy_sd"})
    assert list(parents["run_id"]) == [store["parent"]] and len(trials) == 13
    assert compare.default_grouping(trials) == ["p_L", "sd_schedule"]
    directions = compare.Directions.of(parents, compare.trainable_names(parents, trials))
    assert directions.metric(None) == "val_error"
    assert directions.mode("val_error") == ("min", "declared by resnet") and directions.notes == []
    finished = trials[trials["status"] == "FINISHED"].reset_index(drop=True)
    by = ["p_L", "sd_schedule"]
    table = compare.trial_table(finished, by, compare.final_values(finished, "val_error"), "val_error")
    groups = compare.aggregate(table, by, "val_error", "min")

    expected = sorted(((float(p), s, np.mean(v), np.std(v, ddof=1)) for (p, s), v in FINAL.items()),
                      key=lambda row: row[2])
    assert [(r.p_L, r.sd_schedule) for r in groups.itertuples()] == [(p, s) for p, s, _, _ in expected]
    assert list(groups["rank"]) == [1, 2, 3, 4] and list(groups["n"]) == [3, 3, 3, 3]
    for row, (_, _, mean, std) in zip(groups.itertuples(), expected, strict=True):
        assert row.mean == pytest.approx(mean, abs=1e-12) and row.std == pytest.approx(std, abs=1e-12)
        half = 4.302652729749464 * std / math.sqrt(3)  # t_{0.975, 2}
        assert (row.ci_low, row.ci_high) == pytest.approx((mean - half, mean + half), abs=1e-12)
    assert groups.loc[0, "mean"] == pytest.approx(0.12) and groups.loc[0, "std"] == pytest.approx(0.02)

    # Top (0.5, linear) vs runner-up (1.0, linear). Paired by seed: d = -0.05, -0.04, -0.06, t = mean/(sd/sqrt 3).
    verdict = compare.top_two_verdict(table, groups, by, "val_error", "min")
    d = np.array([-0.05, -0.04, -0.06])
    from scipy import stats
    t_paired = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert verdict.pairs == 3 and verdict.paired_p == pytest.approx(2 * stats.t.sf(abs(t_paired), 2), rel=1e-9)
    a, b = np.array(FINAL[("0.5", "linear")]), np.array(FINAL[("1.0", "linear")])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    t_welch = (a.mean() - b.mean()) / math.sqrt(va + vb)
    assert verdict.welch_p == pytest.approx(2 * stats.t.sf(abs(t_welch), df), rel=1e-9)
    # The pairs see what Welch's test cannot: p 0.013 paired against 0.06 unpaired.
    assert verdict.paired_p < 0.05 < verdict.welch_p and verdict.distinguishable is True
    assert "distinguishable from seed noise" in verdict.text and "NOT" not in verdict.text

    # --at best: the best epoch of each run (seed 1 dipped 0.05 below its final value at epoch 2).
    histories = compare.metric_histories(client, list(finished["run_id"]), "val_error")
    assert len(histories) == 12 * 3
    run_ids = list(finished["run_id"])
    best_steps = compare.selected_steps(run_ids, "best", histories, "min")
    best = compare.final_values(finished, "val_error", "best", histories, best_steps)
    seeds = finished["params.seed"].astype(int)
    finals = compare.final_values(finished, "val_error")
    assert np.allclose(best, finals - np.where(seeds == 1, 0.05, 0.0))
    assert finished["run_id"].map(best_steps).tolist() == [2 if s == 1 else 3 for s in seeds]
    at_one = compare.final_values(finished, "val_error", "1", histories, compare.selected_steps(run_ids, "1"))
    assert np.allclose(at_one, finals + 0.2)


def test_cli_tables_exports_plots_and_log(store: dict, tmp_path: Path) -> None:
    args = ["toy_sd", "--tracking-uri", store["uri"], "--csv", "groups.csv", "--markdown", "groups.md",
            "--plots", "plots", "--html", "report.html", "--log"]
    result = run_cli("orchestrator.compare", args, tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "left out 1 unfinished trial(s) (1 FAILED)" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [r.split("│")[2:4] for r in rows][0][0].strip() == "0.5"
    assert [(r.split("│")[2].strip(), r.split("│")[3].strip()) for r in rows] == [
        ("0.5", "linear"), ("1", "linear"), ("0.5", "uniform"), ("1", "uniform")]
    assert "Best: p_L=0.5, sd_schedule=linear" in out and "It is distinguishable from seed noise" in out

    groups = pd.read_csv(tmp_path / "groups.csv")
    assert list(groups.columns) == ["rank", "p_L", "sd_schedule", "mean", "std", "n", "ci_low", "ci_high"]
    assert groups["mean"].tolist() == pytest.approx([0.12, 0.17, 0.23, 0.32])
    assert groups["n"].tolist() == [3, 3, 3, 3]
    markdown = (tmp_path / "groups.md").read_text()
    assert "| 1 | 0.5 | linear | 0.12 | 0.02 | 3 |" in markdown
    for png in ("learning_curves.png", "val_error_vs_p_L.png"):
        assert_non_blank_png(tmp_path / "plots" / png)
    page = (tmp_path / "report.html").read_text()
    assert COMMIT in page and "python -m orchestrator.sweep toy_sd --seeds 3" in page
    # Two plots and the two trials' samples, captioned with their group, run and value.
    assert page.count("data:image/png;base64,") == 4 and "http://" not in page and "https://" not in page
    assert "#1 p_L=0.5, sd_schedule=linear: samples.png of run p_L=0.5,sd_schedule=linear,seed=0" in page
    assert "#4 p_L=1, sd_schedule=uniform: samples.png" in page

    client = MlflowClient(tracking_uri=store["uri"])
    logged = {a.path for a in client.list_artifacts(store["parent"], "compare")}
    assert {"compare/learning_curves.png", "compare/val_error_vs_p_L.png", "compare/groups.csv",
            "compare/groups.md", "compare/report.html"} <= logged


def test_missing_metric_or_parameter_is_one_line_error(store: dict, capsys: pytest.CaptureFixture) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    before = {a.path for a in client.list_artifacts(store["parent"])}
    code, out, err = compare_main(["toy_sd", "--tracking-uri", store["uri"], "--metric", "val_eror", "--log"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: no metric 'val_eror'") and "metrics: train_loss, val_error" in err
    code, _, err = compare_main(["toy_sd", "--tracking-uri", store["uri"], "--by", "p_L,schedule", "--log"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: no parameter 'schedule'") and "p_L, sd_schedule, seed" in err
    code, _, err = compare_main(["toy_nas", "--tracking-uri", store["uri"], "--pareto", "accuracy:max,lat:min"],
                                capsys)
    assert code == 2 and "no metric 'lat'" in err and "latency_ms" in err
    code, _, err = compare_main(["toy_sdd", "--tracking-uri", store["uri"]], capsys)
    assert code == 2 and "no MLflow experiment 'toy_sdd'" in err and "toy_nas, toy_sd" in err
    code, _, err = compare_main(["toy_sd", "--tracking-uri", f"sqlite:///{store['root'] / 'none.db'}"], capsys)
    assert code == 2 and "no MLflow store" in err and not (store["root"] / "none.db").exists()
    assert {a.path for a in client.list_artifacts(store["parent"])} == before  # nothing written to MLflow


def test_by_one_key_folds_the_other_and_at_best(store: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = compare_main(["toy_sd", "--tracking-uri", store["uri"], "--by", "sd_schedule", "--at", "best",
                                 "--csv", str(tmp_path / "g.csv")], capsys)
    assert code == 0
    assert "also differ between the runs but are not grouped by: p_L" in out
    groups = pd.read_csv(tmp_path / "g.csv")
    linear = FINAL[("0.5", "linear")] + FINAL[("1.0", "linear")]
    best = [v - (0.05 if i % 3 == 1 else 0) for i, v in enumerate(linear)]
    assert groups["sd_schedule"].tolist() == ["linear", "uniform"] and groups["n"].tolist() == [6, 6]
    assert groups.loc[0, "mean"] == pytest.approx(np.mean(best), abs=1e-12)
    assert groups.loc[0, "std"] == pytest.approx(np.std(best, ddof=1), abs=1e-12)


def test_best_per_key_curves_of_another_metric_and_images(store: dict, capsys: pytest.CaptureFixture,
                                                          tmp_path: Path) -> None:
    """--best-per sd_schedule keeps each schedule at its best p_L (both 0.5); --curves-of train_loss draws a second
    set of curves for those groups; the report shows only the shown groups' pictures."""
    args = ["toy_sd", "--tracking-uri", store["uri"], "--best-per", "sd_schedule", "--curves-of", "train_loss",
            "--plots", str(tmp_path / "plots"), "--html", str(tmp_path / "r.html")]
    code, out, _ = compare_main(args, capsys)
    assert code == 0, out
    for png in ("learning_curves.png", "learning_curves_train_loss.png"):
        assert_non_blank_png(tmp_path / "plots" / png)
    page = (tmp_path / "r.html").read_text()
    best = page.split("<h2>Best per sd_schedule</h2>")[1].split("</table>")[0]
    assert best.count("<tr>") == 3 and "<td>linear</td>" in best and "<td>uniform</td>" in best
    assert "<td>0.12</td>" in best and "<td>0.23</td>" in best  # (0.5, linear) and (0.5, uniform)
    assert "#1 p_L=0.5, sd_schedule=linear: samples.png" in page and "sd_schedule=uniform: samples.png" not in page

    for bad, message in ((["--best-per", "depth"], "--best-per depth is not a grouping key"),
                         (["--curves-of", "nope"], "nope")):
        code, _, err = compare_main(["toy_sd", "--tracking-uri", store["uri"], *bad], capsys)
        assert code != 0 and message in err and "Traceback" not in err


PSNR_TRAINABLE = "toy_psnr_task"
# val_psnr and test_psnr of each arch at epochs 1-4; seed s adds 0.1 s to every value. Validation (declared max)
# picks epoch 2 for a and 3 for b, where test_psnr is 30 and 32: b wins. Choosing on test would pick epoch 4 for a
# (35, a wins), and so would the last epoch; a "min" guessed from the name "psnr" would rank a's 21 first.
PSNR = {"a": ([20, 28, 25, 24], [21, 30, 26, 35]), "b": ([22, 26, 29, 27], [22, 27, 32, 28])}
PSNR_PICK = {"a": 2, "b": 3}


@pytest.fixture
def psnr_trainable() -> str:
    """A trainable declaring PSNR, higher is better, with a validation primary; removed afterwards."""

    @registry.register(PSNR_TRAINABLE, defaults={"arch": "a", "seed": 0, "epochs": 4},
                       metrics={"val_psnr": "max", "test_psnr": "max"}, primary="val_psnr")
    def train(config: dict, ctx: object) -> None:  # never run: compare only reads its declarations
        raise AssertionError("not a real trainable")

    yield PSNR_TRAINABLE
    registry.unregister(PSNR_TRAINABLE)


def test_at_best_selects_the_epoch_by_validation_and_ranks_by_the_declared_direction(
        store: dict, psnr_trainable: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=store["uri"])
    experiment = client.create_experiment("toy_psnr", artifact_location=str(store["root"] / "artifacts" / "psnr"))
    tags = {"trainable": psnr_trainable, "search_space": "toy_psnr"}
    parent = client.create_run(experiment, run_name="toy_psnr-20261201-010000", tags=tags).info.run_id
    client.log_batch(parent, params=[Param("metric", "val_psnr"), Param("mode", "max"), Param("space", "toy_psnr")])
    runs = {}
    for arch, (val, test) in PSNR.items():
        for seed in range(3):
            swept = f"arch={arch},seed={seed}"
            runs[arch, seed] = log_run(
                client, experiment, swept, {"arch": arch, "seed": seed, "epochs": 4},
                {"val_psnr": [v + 0.1 * seed for v in val], "test_psnr": [t + 0.1 * seed for t in test]},
                {**tags, "mlflow.parentRunId": parent, "swept": swept})
    client.set_terminated(parent, status="FINISHED")
    args = ["toy_psnr", "--tracking-uri", store["uri"], "--metric", "test_psnr", "--at", "best"]

    code, out, err = compare_main([*args, "--markdown", str(tmp_path / "g.md")], capsys)
    assert code == 0, err
    assert "Best: arch=b with test_psnr@best val_psnr 32.1 ± 0.1 (n=3); runner-up: arch=a with 30.1" in out
    assert (f"test_psnr@best val_psnr over seeds by arch; max is best (declared by {psnr_trainable}); 6 trials of "
            "toy_psnr; each run's step: its best val_psnr (max)") in out
    assert "note:" not in out  # nothing guessed
    markdown = (tmp_path / "g.md").read_text()
    assert "| 1 | b | 32.1 | 0.1 | 3 |" in markdown and "| 2 | a | 30.1 | 0.1 | 3 |" in markdown

    # The step behind each value: validation's best epoch, not test's.
    histories = compare.metric_histories(client, list(runs.values()), "val_psnr")
    steps = compare.selected_steps(list(runs.values()), "best", histories, "max")
    assert {key: steps[run_id] for key, run_id in runs.items()} == {(a, s): PSNR_PICK[a] for a, s in runs}

    # Choosing the epoch on a test metric is refused, before anything is written.
    code, out, err = compare_main([*args, "--select", "test_psnr"], capsys)
    assert code == 2 and out == "" and "never by a test metric (test_psnr)" in err

    # A trainable that is no longer registered: the direction is guessed, and the output says so.
    registry.unregister(psnr_trainable)
    code, out, err = compare_main(args, capsys)
    assert code == 0, err
    assert (f"note: trainable '{psnr_trainable}' is no longer registered: the direction of test_psnr (min) comes "
            "from the metric's name, not from a declaration") in out
    assert "min is best (the metric's name)" in out and "Best: arch=a with test_psnr@best val_psnr 30.1" in out


def test_shared_statistics_and_formatting_on_known_numbers() -> None:
    from orchestrator.tables import fmt_number, markdown_table

    values = [0.10, 0.12, 0.14, np.nan]  # NaN: a run without the value, left out
    assert stats.summarize(values) == pytest.approx((0.12, 0.02, 3))
    half = 4.302652729749464 * 0.02 / math.sqrt(3)  # t_{0.975, 2} s / sqrt(n)
    assert stats.t_interval(values) == pytest.approx((0.12 - half, 0.12 + half))
    assert stats.t_interval([0.3, 0.3]) == (0.3, 0.3) and all(map(math.isnan, stats.t_interval([0.3])))
    assert stats.quarter_means([1, 2, 3, 4, 5, 6, 7, 8]) == (1.5, 7.5)
    assert [fmt_number(v) for v in (None, np.nan, 123456.7, -2500.5, np.float32(0.123456), np.int64(7), "x")] == [
        "", "", "123457", "-2500", "0.1235", "7", "x"]
    frame = pd.DataFrame({"name": ["a|b", "c"], "value": [0.5, np.nan], "n": [3, 4]})
    assert markdown_table(frame) == ("| name | value | n |\n|---|---:|---:|\n| a\\|b | 0.5 | 3 |\n| c |  | 4 |\n")
    assert markdown_table([["x", 1234.5]], ["k", "v"]).splitlines()[2] == "| x | 1234 |"


def test_pareto_front_on_known_points() -> None:
    points = np.array(NAS)
    front = stats.pareto_mask(points, [True, False])
    assert {f"t{i}" for i in np.flatnonzero(front)} == NAS_FRONT
    assert stats.pareto_mask(points, [True, True]).tolist() == [False] * 5 + [True, False]  # (0.96, 80) wins
    frame = pd.DataFrame(NAS, columns=["accuracy", "latency_ms"], index=[f"t{i}" for i in range(len(NAS))])
    frame.loc["t7"] = [np.nan, 1.0]  # unmeasured: not a candidate, although nothing beats its latency
    nas_front = stats.pareto_front(frame, x="latency_ms", y="accuracy", x_mode="min", y_mode="max")
    assert list(nas_front.index) == ["t0", "t1", "t2", "t5"]  # best latency first


def test_architecture_search_pareto_and_reward(store: dict, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = compare_main(["toy_nas", "--tracking-uri", store["uri"], "--pareto", "accuracy:max,latency_ms:min",
                                 "--reward", "reward:max", "--plots", str(tmp_path), "--html",
                                 str(tmp_path / "nas.html")], capsys)
    assert code == 0
    assert "Pareto front (accuracy max, latency_ms min): 4 of 7 trials" in out
    front_rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| t")}
    assert front_rows == NAS_FRONT
    # Ranked by the search's own metric (the parent's param), highest reward first; each architecture is a group.
    rewards = {f"t{i}": a * (lat / 30.0) ** -0.07 for i, (a, lat) in enumerate(NAS)}
    assert "reward over seeds by op0, op1; max is best" in out
    assert f"Best: op0=conv{max(rewards, key=rewards.get)[1]}" in out and "a group has a single run" in out
    for png in ("pareto.png", "reward.png", "learning_curves.png"):
        assert_non_blank_png(tmp_path / png)


# ------------------------------------------------------------------------------------------------------------
def assert_non_blank_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20 and pixels.std() > 0.02, f"{path} looks blank"
    return pixels


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")
def test_html_report_renders_in_headless_chromium(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report = tmp_path / "report.html"
    code, _, _ = compare_main(["toy_sd", "--tracking-uri", store["uri"], "--html", str(report)], capsys)
    assert code == 0
    images, errors = render_in_chromium(report, tmp_path / "profile")
    assert errors == []
    assert len(images) == 4 and all(done and width > 300 and height > 200 for done, width, height in images), images

    # The probe is not blind: an outside image and a console.error on the same page are both reported.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace(
        "</body>", '<img src="https://example.invalid/x.png"><script>console.error("boom")</script></body>'))
    images, errors = render_in_chromium(broken, tmp_path / "profile2")
    assert len(errors) >= 2 and images[-1][1] == 0

    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile3'}", f"--screenshot={shot}",
                    "--window-size=1280,1600", "--hide-scrollbars", report.resolve().as_uri()],
                   capture_output=True, timeout=60, check=True)
    pixels = assert_non_blank_png(shot)
    assert pixels.shape[:2] == (1600, 1280)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_same_table_through_an_mlflow_server(store: dict, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    # Its own session, so the server's workers go down with it (killed by the group of the pid we started). No
    # background job runner: it only serves GenAI jobs and costs a busy 2-core machine tens of seconds at start.
    server_env = {**cli_env(tmp_path), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store['db']}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not answer /health in 90 s"
            time.sleep(0.5)
        local = run_cli("orchestrator.compare", ["toy_sd", "--tracking-uri", store["uri"], "--csv", "local.csv"],
                        tmp_path, timeout=120)
        env = {**cli_env(tmp_path), "MLFLOW_TRACKING_URI": url}
        remote = subprocess.run([sys.executable, "-m", "orchestrator.compare", "toy_sd", "--csv", "remote.csv"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert local.returncode == 0, local.stderr[-2000:]
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert (tmp_path / "remote.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert len(pd.read_csv(tmp_path / "remote.csv")) == 4
    table = [line for line in remote.stdout.splitlines() if line.startswith("│")]
    assert table and table == [line for line in local.stdout.splitlines() if line.startswith("│")]


@pytest.mark.slow
def test_compare_reads_a_real_sweep(tmp_path: Path, ray_address: str) -> None:
    """A real (tiny) sd_rates sweep, p_L pinned: 2 schedules x 2 seeds. The groups must be exactly the child runs'
    own last val_error values, folded over seeds."""
    sweep = run_cli("orchestrator.sweep", ["sd_rates", "--seeds", "2", "--address", ray_address, "--set", "p_L=0.5",
                                           "epochs=2", "depth=8", "limit_train_batches=2", "batch_size=32"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    result = run_cli("orchestrator.compare", ["sd_rates", "--csv", "groups.csv", "--at", "best"], tmp_path,
                     timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_error@best over seeds by sd_schedule; min is best (declared by resnet)" in result.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sd_rates").experiment_id])
    best: dict[str, list[float]] = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            history_ = [m.value for m in client.get_metric_history(run.info.run_id, "val_error")]
            assert len(history_) == 2
            best.setdefault(run.data.params["sd_schedule"], []).append(min(history_))
    groups = pd.read_csv(tmp_path / "groups.csv")
    expected = sorted(best.items(), key=lambda item: np.mean(item[1]))
    assert groups["n"].tolist() == [2, 2]
    assert groups["mean"].tolist() == pytest.approx([np.mean(v) for _, v in expected], abs=1e-12)
    assert groups["std"].tolist() == pytest.approx([np.std(v, ddof=1) for _, v in expected], abs=1e-12)
    if np.mean(expected[0][1]) != np.mean(expected[1][1]):  # a tie leaves the order to the sort
        assert groups["sd_schedule"].tolist() == [k for k, _ in expected]
