"""``python -m orchestrator.repro``: a paper's claim checked as code, its verdict computed from the runs in MLflow.

Examples::

    python -m orchestrator.repro --list                             # the claims and their last verdicts
    python -m orchestrator.repro mask_rcnn_roialign                 # run (or reuse) the laptop budget, decide
    python -m orchestrator.repro mask_rcnn_roialign --budget gpu --address auto --storage s3://bucket/repro
    python -m orchestrator.repro all --budget smoke                 # every claim whose budget fits here
    python -m orchestrator.repro report                             # rewrite docs/RESULTS.md's generated parts
    python -m orchestrator.repro export                             # the reported runs -> repro/results_store.json
    python -m orchestrator.repro report --snapshot repro/results_store.json --check   # what CI checks

A claim (:mod:`orchestrator.claims`; the shipped ones in ``repro/claims.py``) names its sweep, budgets, metric and
test. Checking it runs the budget's commands through the same executor as ``orchestrator.sweep`` / ``nas`` / ``rl``
(so a run is tracked, checkpointed and resumable like any other), reusing every command whose finished run of the
same command line and code version is already in MLflow (:mod:`orchestrator.claim_runs`): a second check trains
nothing. The verdict, with its effect, interval and n, is printed and logged to the parent run(s) it came from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import claim_runs, claims, cli, executor, results_doc, run_snapshot, tracking
from orchestrator.claims import Claim, ClaimError
from orchestrator.tables import fmt_number

DEFAULT_BUDGET = "laptop"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.repro",
        description="Check a paper's claim: run (or reuse) its sweep at a budget and decide it with its statistical "
        "test; 'all' checks every claim, 'report' regenerates docs/RESULTS.md's tables from MLflow.",
    )
    parser.add_argument("target", nargs="?",
                        help="a claim name, 'all', 'report' or 'export' (--list shows the claims)")
    parser.add_argument("--list", action="store_true", help="list the claims with their last verdicts")
    parser.add_argument("--budget", choices=claims.BUDGETS,
                        help=f"budget preset (default {DEFAULT_BUDGET}; report: the largest one recorded)")
    parser.add_argument("--address", help="join a running Ray cluster (default: RAY_ADDRESS or an embedded Ray)")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded local Ray (default: all)")
    parser.add_argument("--storage", help="Tune storage path (default ./ray_results; a cluster needs s3:// or NFS)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or "
                        "sqlite:///mlflow.db in the working directory)")
    parser.add_argument("--results", default=str(results_doc.RESULTS),
                        help="report: the Markdown file to rewrite (default docs/RESULTS.md)")
    parser.add_argument("--check", action="store_true",
                        help="report: change nothing; exit 1 and show the difference if the file is out of date")
    parser.add_argument("--snapshot", help="report: read the runs from this snapshot file (what export writes) "
                        "instead of the tracking store")
    parser.add_argument("--out", default=str(run_snapshot.SNAPSHOT),
                        help="export: the snapshot file to write (merged by claim; default repro/results_store.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            return list_claims(tracking.resolve_tracking_uri(args.tracking_uri))
        if not args.target:
            raise cli.UserError("name a claim, 'all' or 'report' (python -m orchestrator.repro --list shows them)")
        if args.target == "report":
            return report(args)
        if args.target == "export":
            uri = tracking.resolve_tracking_uri(args.tracking_uri)
            tracking.check_reachable(uri)
            written = run_snapshot.export(claim_runs.client(uri), Path(args.out), args.budget)
            print(f"{args.out}: the reported runs of {len(written)} claim(s) from {uri}: {', '.join(written)}")
            return 0
        budget = args.budget or DEFAULT_BUDGET
        if args.target == "all":
            return check_all(budget, args)
        status, _ = check_claim(claims.get_claim(args.target), budget, args)
        return status
    except ClaimError as err:
        raise cli.UserError(str(err)) from None


def report(args: argparse.Namespace) -> int:
    """RESULTS.md from the tracking store, or from a snapshot loaded into a throwaway sqlite store."""
    import tempfile

    path = Path(args.results)
    if not args.snapshot:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        tracking.check_reachable(uri)
        return results_doc.report(uri, path, budget=args.budget, check=args.check)
    snapshot = Path(args.snapshot)
    if not snapshot.is_file():
        raise cli.UserError(f"no snapshot at {snapshot}")
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/snapshot.db"
        try:
            run_snapshot.load(snapshot, claim_runs.client(uri))
        except (ValueError, KeyError, TypeError) as err:  # JSON errors are ValueErrors
            raise cli.UserError(f"{snapshot} is not a snapshot this code reads: {err}") from None
        return results_doc.report(uri, path, budget=args.budget, check=args.check, source=str(snapshot))


def location_flags(args: argparse.Namespace) -> list[str]:
    """Where the commands run and record: passed to every command, never part of its identity."""
    flags = ["--tracking-uri", tracking.resolve_tracking_uri(args.tracking_uri)]
    for flag, value in (("--address", args.address), ("--num-cpus", args.num_cpus), ("--storage", args.storage)):
        if value is not None:
            flags += [flag, str(value)]
    return flags


def run_command(command: claim_runs.Command, argv: list[str], tags: dict[str, str]) -> int:
    """One command of the claim, in this process (one Ray for all of a claim's commands), its parent run tagged."""
    module = importlib.import_module(command.module)
    with executor.parent_tags(tags):
        return module.main(command.runnable(argv))


def resume_argv(command: claim_runs.Command, prior: Any, args: argparse.Namespace) -> list[str] | None:
    """The command line that continues an interrupted run of ``command`` (None if its experiment is not known)."""
    folder = prior.data.tags.get("ray.experiment")
    if not folder or "/" not in folder:
        return None
    storage, name = folder.rsplit("/", 1)
    flags = []  # the record holds the tracking URI; only where Ray runs is this call's
    for flag, value in (("--address", args.address), ("--num-cpus", args.num_cpus)):
        if value is not None:
            flags += [flag, str(value)]
    return [*command.resume_lead, "--resume", "--name", name, "--storage", storage, *flags]


def check_claim(claim: Claim, budget: str, args: argparse.Namespace) -> tuple[int, claims.Verdict | None]:
    """Run what is missing of the claim's budget, decide it from MLflow, print and log the verdict."""
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_reachable(uri)
    code = claim_runs.code_version()
    store = claim_runs.client(uri)
    commands = claim_runs.commands(claim, budget)
    print(f"claim '{claim.name}' ({claim.paper}) at budget {budget}: {claim.sentence}")
    status = 0
    for command in commands:
        prior = claim_runs.command_parent(store, command, code)
        if prior is not None and prior.info.status == "FINISHED":
            print(f"reusing the finished run {prior.info.run_id} of: {command.line()}")
            claim_runs.adopt(store, prior, claim)
            continue
        tags = claim_runs.parent_tags(claim, budget, command, code)
        argv = [*command.argv, "--experiment", command.experiment(), *location_flags(args)]
        resume = resume_argv(command, prior, args) if prior is not None and prior.info.status == "KILLED" else None
        if resume:
            print(f"continuing the interrupted run {prior.info.run_id} of: {command.line()}")
            try:
                result = run_command(command, resume, tags)
            except cli.user_error_types() as err:  # its Tune state is gone: the command starts again
                print(f"could not continue it ({' '.join(str(err).split())}); running it again")
                result = run_command(command, argv, tags)
        else:
            print(f"running: {command.line()}")
            result = run_command(command, argv, tags)
        if result in (cli.EXIT_INTERRUPTED, 128 + 15):
            print(f"interrupted; continue with: python -m orchestrator.repro {claim.name} --budget {budget}",
                  file=sys.stderr)
            return result, None
        status = max(status, result)
    parents = [p for p in (claim_runs.command_parent(store, c, code) for c in commands) if p is not None]
    for parent in parents:  # a resumed run another claim started is this claim's too
        claim_runs.adopt(store, parent, claim)
    verdict, table = claim_runs.decide(store, claim, parents)
    print_verdict(claim, verdict, table)
    if parents:
        claim_runs.log_verdict(store, parents, claim, verdict, table)
    if status:
        print(f"warning: a command of the claim did not finish cleanly (exit {status}); the verdict is from the "
              "trials that finished", file=sys.stderr)
    return status, verdict


def print_verdict(claim: Claim, verdict: claims.Verdict, table: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    arms = Table(title=f"'{claim.name}': what was compared")
    for column in table.columns:
        arms.add_column(str(column), justify="left" if column in ("arm", "metric") else "right")
    for row in table.itertuples(index=False):
        arms.add_row(*(fmt_number(v) for v in row))
    Console().print(arms)
    print(f"verdict: {verdict.line()}")


def check_all(budget: str, args: argparse.Namespace) -> int:
    """Every claim at ``budget``; one that cannot run here (a GPU budget without GPUs, a missing dataset) is
    skipped with its reason, and the others still run."""
    outcomes = []
    for name, claim in claims.all_claims().items():
        try:
            status, verdict = check_claim(claim, budget, args)
        except (*cli.user_error_types(), ClaimError) as err:  # a claim whose runs cannot be read: the rest still run
            outcomes.append((name, "skipped: " + " ".join(str(err).split())))
            print(f"claim '{name}' skipped: {outcomes[-1][1]}", file=sys.stderr)
            continue
        if status in (cli.EXIT_INTERRUPTED, 128 + 15):
            return status
        outcomes.append((name, verdict.line() if verdict else f"exit {status}"))
    print("\n".join(f"{name}: {line}" for name, line in outcomes))
    return 0 if all(not line.startswith(("skipped", "exit")) for _, line in outcomes) else 1


def list_claims(uri: str) -> int:
    """The registered claims with the last verdict MLflow holds for each (any budget)."""
    from rich.console import Console
    from rich.table import Table

    store = claim_runs.client(uri) if tracking_store_exists(uri) else None
    table = Table(title="claims (python -m orchestrator.repro CLAIM --budget smoke|laptop|gpu)")
    for column in ("claim", "paper", "runs", "last verdict"):
        table.add_column(column)
    for name, claim in claims.all_claims().items():
        last = "not checked yet"
        for run in claim_runs.claim_parents(store, claim) if store else []:
            line = run.data.tags.get(claim_runs.verdict_tag(claim, "verdict_line"))
            if line:
                when = dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC).strftime("%Y-%m-%d")
                last = f"{line} ({run.data.tags['repro.budget']}, {when})"
                break
        table.add_row(name, claim.paper, f"{claim.command} {claim.space}".strip(), last)
    Console(width=200).print(table)
    return 0


def tracking_store_exists(uri: str) -> bool:
    """A sqlite store that is not there has no verdicts (and listing must not create it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


if __name__ == "__main__":
    sys.exit(cli.run(main))
