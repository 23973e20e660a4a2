"""`python -m orchestrator.repro` end to end: a claim's smoke budget through the CLI, a second check that trains
nothing, the verdict on the parent run and in --list, the report's round trip through a snapshot, the committed
RESULTS.md against the committed snapshot, the validation-selected read, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import claim_runs, claims, results_doc, run_snapshot
from tests.conftest import REPO, run_cli, run_gated_cli, start_gated_cli, trial_runs, wait_until

CLAIM = "mask_rcnn_roialign"  # the cheapest claim at its smoke budget (6 trials of 2 steps)


def repro(args: list[str], cwd: Path, ray_address: str | None = None) -> object:
    return run_cli("orchestrator.repro", [*args, *(["--address", ray_address] if ray_address else [])], cwd)


def all_runs(store: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("repro-mask_rcnn_roi")  # a claim's runs are in its space's experiment
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_a_claim_is_checked_once_and_reused_then_listed_and_reported(tmp_path: Path, ray_address: str) -> None:
    first = repro([CLAIM, "--budget", "smoke"], tmp_path, ray_address)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "running: python -m orchestrator.sweep search_spaces/mask_rcnn_roi.yaml --seeds 3" in first.stdout
    verdict = next(line for line in first.stdout.splitlines() if line.startswith("verdict: "))
    assert "(paired t-test by seed)" in verdict and "n = 3 vs 3" in verdict
    runs = all_runs(tmp_path / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 7  # one sweep: 2 roi ops x 3 seeds
    tags = parents[0].data.tags
    assert tags["repro.claims"] == f" {CLAIM} " and tags["repro.budget"] == "smoke"
    assert tags[f"repro.{CLAIM}.verdict_line"] == verdict.removeprefix("verdict: ")
    assert tags[f"repro.{CLAIM}.verdict"] in ("reproduced", "not reproduced", "inconclusive")
    assert tags["repro.code"] == claim_runs.code_version()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = client.download_artifacts(parents[0].info.run_id, f"repro/{CLAIM}.md", str(tmp_path))
    assert "| roi_op=align | test_mask_ap (selected) |" in Path(table).read_text()

    # the same claim, budget and code again: every command is reused, nothing trains, the verdict is the same
    second = repro([CLAIM, "--budget", "smoke"], tmp_path, ray_address)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the finished run" in second.stdout and "running:" not in second.stdout
    assert verdict in second.stdout
    assert len(all_runs(tmp_path / "mlflow.db")) == 7

    listed = repro(["--list"], tmp_path)
    assert listed.returncode == 0 and "(smoke," in listed.stdout

    # the report from the live store and from its snapshot are the same document
    live, snapped = tmp_path / "live.md", tmp_path / "snapped.md"
    shutil.copy(REPO / "docs" / "RESULTS.md", live)
    shutil.copy(REPO / "docs" / "RESULTS.md", snapped)
    assert repro(["report", "--budget", "smoke", "--results", str(live)], tmp_path).returncode == 0
    exported = repro(["export", "--budget", "smoke", "--out", str(tmp_path / "snap.json")], tmp_path)
    assert exported.returncode == 0 and CLAIM in exported.stdout
    made = repro(["report", "--budget", "smoke", "--results", str(snapped), "--snapshot", str(tmp_path / "snap.json")],
                 tmp_path)
    assert made.returncode == 0, made.stderr
    assert live.read_text() == snapped.read_text()
    block = live.read_text().split(f"<!-- repro:begin {CLAIM} ", 1)[1].split(f"<!-- repro:end {CLAIM} -->")[0]
    assert verdict.removeprefix("verdict: ").split(": ", 1)[1] in block and "budget smoke" in block
    assert "Linux" in block or "Darwin" in block  # the machine the runs were made on


def test_the_committed_results_are_what_the_committed_snapshot_gives(tmp_path: Path) -> None:
    result = repro(["report", "--check", "--snapshot", str(run_snapshot.SNAPSHOT)], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    # and the check can fail: one number changed inside a generated block
    text = (REPO / "docs" / "RESULTS.md").read_text()
    start = text.index("<!-- repro:begin index ")
    stale = tmp_path / "RESULTS.md"
    stale.write_text(text[:start] + text[start:].replace("| not checked yet |", "| reproduced |", 1))
    result = repro(["report", "--check", "--snapshot", str(run_snapshot.SNAPSHOT), "--results", str(stale)], tmp_path)
    assert result.returncode == 1 and "run python -m orchestrator.repro report" in result.stderr
    assert "-| " in result.stdout and "+| " in result.stdout  # the diff names the line


def test_every_run_in_the_snapshot_is_a_registered_claims_reported_budget() -> None:
    data = json.loads(run_snapshot.SNAPSHOT.read_text())
    assert data["runs"]
    for parent in data["runs"]:
        assert set(parent["tags"]["repro.claims"].split()) <= set(claims.all_claims())
        assert parent["tags"]["repro.budget"] in results_doc.REPORTED_BUDGETS and parent["children"]


def test_the_selected_read_is_the_reported_metric_at_the_best_validation_report() -> None:
    claim = claims.get_claim(CLAIM)
    selected = claims.Claim(**{**claim.__dict__, "name": "selected_probe", "read_at": "selected"})
    histories = {"val_mask_ap": [(1, 0.2), (2, 0.5), (3, 0.4)], "test_mask_ap": [(1, 0.1), (2, 0.3), (3, 0.9)]}
    store = SimpleNamespace(get_metric_history=lambda run_id, name: [
        SimpleNamespace(step=s, value=v) for s, v in histories[name]])
    frame = claim_runs._with_selected(store, selected, pd.DataFrame({"run_id": ["r1"]}))
    # val is best (max) at step 2, so the test value reported is step 2's 0.3, not the final 0.9 nor the best 0.9
    assert frame["metrics.selected/test_mask_ap"].tolist() == [0.3]


@pytest.mark.parametrize(("args", "message"), [
    (["no_such_claim"], "unknown claim 'no_such_claim'; known: "),
    ([CLAIM, "--budget", "huge"], "argument --budget: invalid choice: 'huge'"),
    (["report", "--snapshot", "missing.json"], "no snapshot at missing.json"),
    ([], "name a claim, 'all' or 'report'"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = repro(args, tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_budget_becomes_commands_whose_identity_ignores_where_they_run(tmp_path: Path) -> None:
    base = claims.get_claim(CLAIM)
    nas = claims.Claim(**{**base.__dict__, "name": "nas_probe", "command": "nas", "space": "", "unit": "search",
                          "variants": (("--controller", "ppo"), ("--controller", "random"))})
    lines = [c.line() for c in claim_runs.commands(nas, "smoke")]
    assert len(lines) == 6 and lines[0].startswith("python -m orchestrator.nas --seed 0 --controller ppo")
    assert all(" --set epochs=1 " in f"{line} " for line in lines)  # --set last: it takes every word after it
    rl = claims.Claim(**{**base.__dict__, "name": "rl_probe", "command": "rl dqn", "space": "dqn_cartpole"})
    (command,) = claim_runs.commands(rl, "laptop")
    assert command.argv[:5] == ("dqn", "--sweep", "dqn_cartpole", "--seeds", "3") and command.resume_lead == ("dqn",)
    (sweep,) = claim_runs.commands(base, "smoke")
    assert sweep.runnable()[0] == str(REPO / "search_spaces" / "mask_rcnn_roi.yaml")  # runs from any folder
    assert sweep.line().startswith("python -m orchestrator.sweep search_spaces/mask_rcnn_roi.yaml")
    assert sweep.key("v1") == sweep.key("v1") != sweep.key("v2") and sweep.experiment() == "repro-mask_rcnn_roi"
    with pytest.raises(claims.ClaimError, match="no budget 'huge'"):
        claim_runs.commands(base, "huge")


def test_the_code_version_follows_the_sources(tmp_path: Path) -> None:
    (tmp_path / "trainables").mkdir()
    (tmp_path / "trainables" / "net.py").write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("prose\n")
    before = claim_runs.code_version(tmp_path)
    (tmp_path / "docs" / "notes.md").write_text("other prose\n")  # not a source of results
    assert claim_runs.code_version(tmp_path) == before
    (tmp_path / "trainables" / "net.py").write_text("x = 2\n")
    assert claim_runs.code_version(tmp_path) != before


def test_all_reports_each_claim_and_fails_if_one_could_not_run(monkeypatch, capsys) -> None:
    from orchestrator import cli, repro

    names = list(claims.all_claims())

    def check(claim, budget, args):  # noqa: ANN001, ANN202
        if claim.name == names[0]:
            raise cli.UserError("needs 1 GPU per trial; this machine has none")
        if claim.name == names[1]:
            raise claims.ClaimError("the runs have no metric column metrics.x")
        return 0, claims.Verdict("inconclusive", 0.1, (-1.0, 1.2), 0.5, 3, 3, "Welch t-test", 0.95)

    monkeypatch.setattr(repro, "check_claim", check)
    status = repro.check_all("gpu", SimpleNamespace())
    out = capsys.readouterr()
    assert status == 1 and f"{names[0]}: skipped: needs 1 GPU per trial" in out.out
    assert f"{names[1]}: skipped: the runs have no metric column metrics.x" in out.out
    assert all(f"{name}: inconclusive: effect +0.1" in out.out for name in names[2:])


def test_every_claims_commands_carry_its_budget_and_pins_to_the_cli() -> None:
    from orchestrator import nas, rl, spaces, sweep

    parsers = {"orchestrator.sweep": sweep.build_parser(), "orchestrator.nas": nas.build_parser(),
               "orchestrator.rl": rl.build_parser()}
    for claim in claims.all_claims().values():
        for budget_name, budget in claim.budgets.items():
            for command, flags in zip(claim_runs.commands(claim, budget_name),
                                      _variants_per_command(claim, budget.seeds), strict=True):
                args = parsers[command.module].parse_args(command.runnable())
                pins, _ = claim_runs.split_set(flags)
                expected = {**budget.overrides, **spaces.parse_overrides([f"{k}={v}" for k, v in pins.items()])}
                assert spaces.parse_overrides(args.set) == expected, (claim.name, budget_name, command.line())


def _variants_per_command(claim: claims.Claim, seeds: int) -> list[tuple[str, ...]]:
    """The variant behind each of a claim's commands, in order (a NAS claim runs each variant once per seed)."""
    return [v for v in claim.variants for _ in range(seeds if claim.command == "nas" else 1)]


def test_two_claims_on_one_sweep_share_its_runs(tmp_path: Path, ray_address: str) -> None:
    first = repro(["gumbel_annealing_soft", "--budget", "smoke"], tmp_path, ray_address)
    assert first.returncode == 0, first.stderr[-3000:]
    second = repro(["gumbel_annealing_straight_through", "--budget", "smoke"], tmp_path, ray_address)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the finished run" in second.stdout and "running:" not in second.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("repro-gumbel_temperature")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1  # one sweep, two claims, each verdict on it
    tags = parents[0].data.tags
    assert tags["repro.claims"] == " gumbel_annealing_soft gumbel_annealing_straight_through "
    for name, output in (("gumbel_annealing_soft", first), ("gumbel_annealing_straight_through", second)):
        assert f"verdict: {tags[f'repro.{name}.verdict_line']}" in output.stdout


def test_an_interrupted_check_continues_its_sweep_and_records_each_trial_once(tmp_path: Path, ray_address: str,
                                                                             monkeypatch) -> None:
    import signal

    gate = tmp_path / "gate"
    space = tmp_path / "probe.yaml"  # x = 1 is held after its first epoch until the gate exists
    space.write_text(f"trainable: gated\nconfig: {{epochs: 2, hold_x: 1, gate: '{gate}'}}\n"
                     "space:\n  x: {grid: [0, 1]}\n")
    monkeypatch.setenv("GATED_CLAIM_SPACE", str(space))
    args = ["gated_probe", "--budget", "smoke", "--address", ray_address]
    process = start_gated_cli("orchestrator.repro", args, tmp_path)

    def children() -> list:
        return trial_runs(tmp_path / "mlflow.db", "repro-probe")

    wait_until(lambda: any(r.data.params.get("x") == "1" and "checkpoint" in r.data.tags for r in children()),
               "a held trial's first checkpoint", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err[-3000:]
    assert "continue with: python -m orchestrator.repro gated_probe --budget smoke" in err
    gate.touch()

    again = run_gated_cli("orchestrator.repro", args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing the interrupted run" in again.stdout and "verdict: " in again.stdout
    runs = children()
    assert sorted((r.data.params["x"], r.data.params["seed"]) for r in runs) == [
        (x, s) for x in ("0", "1") for s in ("0", "1", "2")]  # each trial once, none trained twice
    assert all(r.info.status == "FINISHED" for r in runs)
