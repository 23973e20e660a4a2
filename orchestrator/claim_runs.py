"""A claim's runs in MLflow (issue 20): the commands a budget stands for, which recorded runs are theirs, and the
verdict written back.

Identity: every command a claim runs is keyed by the claim, the command line (without where it runs: address,
storage, tracking URI) and the code version, a hash of the sources that decide a result (``orchestrator/``,
``trainables/``, the search spaces). The key is a tag of the command's parent run (:func:`executor.parent_tags`);
a FINISHED parent with the same key is that command already done, so ``repro CLAIM`` twice trains once. A change to
any of those sources is a new code version: conservative (an edit to a plot re-runs everything), but a reused
verdict can never come from code other than the one checked out.

One sample of the claim is a trial's run (``unit="trial"``: the children of the parents) or a parent run itself
(``unit="search"``). ``read_at="selected"`` fills ``metrics.selected/<m>`` from the metric histories: the value
of ``m`` at the first report where the claim's ``select_metric`` was best in its declared direction.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator import claims, spaces
from orchestrator.claims import Claim, ClaimError
from orchestrator.tables import markdown_table
from trainables import registry

REPO = Path(__file__).resolve().parents[1]
CODE_SOURCES = ("orchestrator/**/*.py", "trainables/**/*.py", "search_spaces/*.yaml", "repro/*.yaml")
TAG = "repro."  # the prefix of every tag this module writes


def code_version(root: Path = REPO) -> str:
    """A short hash of the sources that decide a run's result (their paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in CODE_SOURCES for p in root.glob(pattern) if "__pycache__" not in p.parts}):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Command:
    """One command line of a claim's budget, as ``python -m MODULE ARGV`` (where it runs is added at run time)."""

    module: str
    argv: tuple[str, ...]
    resume_lead: tuple[str, ...]  # what precedes --resume to continue it (the space, the algorithm)
    space: str = ""  # the search space it runs, if any (names its MLflow experiment)

    def experiment(self) -> str:
        """Its MLflow experiment: one per search space, so claims that share a sweep share its runs there, and one
        per command without a space (``repro-nas``, ``repro-bc``)."""
        stem = Path(self.space).stem if self.space else (self.resume_lead or (self.module.rsplit(".", 1)[-1],))[0]
        return f"repro-{stem}"

    def runnable(self, argv: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """``argv`` (default: the command's) as run from any working directory: a space file named relative to the
        repository made absolute. The identity and the printed line keep the relative name: the same on any clone."""
        return [str(REPO / word) if word.endswith((".yaml", ".yml")) and (REPO / word).is_file() else word
                for word in (self.argv if argv is None else argv)]

    def key(self, code: str) -> str:
        """The command's identity: its line and the code version. Not the claim: two claims that need the same
        command (two comparisons on one sweep) share one run of it."""
        text = json.dumps([self.module, list(self.argv), code])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def line(self) -> str:
        return f"python -m {self.module} {shlex.join(self.argv)}"


def _override_text(value: Any) -> str:
    # --set parses YAML scalars: JSON spells lists and booleans in a way YAML reads back the same
    return value if isinstance(value, str) else json.dumps(value)


def split_set(flags: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """A variant's ``--set k=v ...`` pins (by key) and its other flags."""
    pins: dict[str, str] = {}
    other: list[str] = []
    in_set = False
    for word in flags:
        if word.startswith("--"):
            in_set = word == "--set"
            if in_set:
                continue
        if in_set:
            key, _, value = word.partition("=")
            pins[key] = value
        else:
            other.append(word)
    return pins, other


def commands(claim: Claim, budget_name: str) -> list[Command]:
    """The commands that make the claim's runs at ``budget_name``: one per variant (NAS: per variant and seed)."""
    if budget_name not in claim.budgets:
        raise ClaimError(f"claim '{claim.name}' has no budget '{budget_name}'; it has {sorted(claim.budgets)}")
    budget = claim.budgets[budget_name]
    kind, *lead = claim.command.split()
    out = []
    for flags in claim.variants:
        # one --set per command (argparse keeps the last): the budget's values, then the variant's pins over them
        pins, variant = split_set(flags)
        sets = {**{k: _override_text(v) for k, v in budget.overrides.items()}, **pins}
        tail = [*budget.sweep_args, *(["--set", *(f"{k}={v}" for k, v in sets.items())] if sets else [])]
        if kind == "nas":
            space = ["--space", claim.space] if claim.space else []
            for seed in range(budget.seeds):
                out.append(Command("orchestrator.nas", (*lead, *space, "--seed", str(seed), *variant, *tail), (),
                                   claim.space))
        elif kind == "rl":
            # "rl ALGO": every variant runs ALGO; a bare "rl": each variant names its algorithm first (CRR vs BC)
            algo, rest = (lead, variant) if lead else (variant[:1], variant[1:])
            sweep = ["--sweep", claim.space] if claim.space else []
            out.append(Command("orchestrator.rl", (*algo, *sweep, "--seeds", str(budget.seeds), *rest, *tail),
                               tuple(algo), claim.space))
        else:
            out.append(Command("orchestrator.sweep", (claim.space, "--seeds", str(budget.seeds), *variant, *tail),
                               (claim.space,), claim.space))
    return out


def machine() -> str:
    """Where the runs were made, for the record: OS, architecture, CPUs and the GPUs torch sees (no host name)."""
    gpus = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpus = ", ".join(sorted(set(names))) + f" x{len(names)}"
    except ImportError:  # pragma: no cover (torch is a dependency)
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {gpus}"


def parent_tags(claim: Claim, budget_name: str, command: Command, code: str) -> dict[str, str]:
    """What a claim's command tags its parent run with: how a later ``repro`` finds it, and what the report cites."""
    tags = {f"{TAG}claims": f" {claim.name} ", f"{TAG}budget": budget_name, f"{TAG}key": command.key(code),
            f"{TAG}code": code, f"{TAG}command": command.line(), f"{TAG}machine": machine()}
    if uncommitted_sources():
        tags[f"{TAG}uncommitted"] = "true"  # the commit tag alone would not say which code ran
    return tags


def uncommitted_sources(root: Path = REPO) -> bool:
    """Whether the checkout's result-deciding sources differ from its commit (False outside git)."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "orchestrator", "trainables", "search_spaces",
                              "repro"], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip() for line in out.stdout.splitlines())


def client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_ids(mlflow: Any, names: set[str]) -> list[str]:
    found = [mlflow.get_experiment_by_name(name) for name in sorted(names)]
    return [e.experiment_id for e in found if e is not None]


def claim_parents(mlflow: Any, claim: Claim, budget_name: str | None = None) -> list[Any]:
    """The parent runs a claim ran or adopted, newest first (of one budget when given). The ``repro.claims`` tag
    lists the claims of a run with a space on each side, so one name never matches inside another."""
    names = {c.experiment() for budget in claim.budgets for c in commands(claim, budget)}
    ids = _experiment_ids(mlflow, names)
    if not ids:
        return []
    query = f"tags.`{TAG}claims` LIKE '% {claim.name} %'"
    if budget_name:
        query += f" and tags.`{TAG}budget` = '{budget_name}'"
    return mlflow.search_runs(ids, filter_string=query, max_results=10_000, order_by=["attributes.start_time DESC"])


def command_parent(mlflow: Any, command: Command, code: str) -> Any | None:
    """The newest parent run of ``command`` at code version ``code``, whichever claim ran it (FINISHED preferred:
    a rerun after a finished one is never needed)."""
    ids = _experiment_ids(mlflow, {command.experiment()})
    if not ids:
        return None
    runs = mlflow.search_runs(ids, filter_string=f"tags.`{TAG}key` = '{command.key(code)}'", max_results=1000,
                              order_by=["attributes.start_time DESC"])
    finished = [run for run in runs if run.info.status == "FINISHED"]
    return (finished or runs or [None])[0]


def adopt(mlflow: Any, run: Any, claim: Claim) -> None:
    """Add ``claim`` to the claims of ``run`` (another claim's run of the same command, reused)."""
    listed = run.data.tags.get(f"{TAG}claims", " ")
    if f" {claim.name} " not in listed:
        mlflow.set_tag(run.info.run_id, f"{TAG}claims", f"{listed}{claim.name} ")


def newest_round(parents: list[Any]) -> list[Any]:
    """The FINISHED parents of the newest code version among ``parents`` (one per command key): the runs a report
    or a listing reads when it is not told which ones."""
    finished = [run for run in parents if run.info.status == "FINISHED"]
    if not finished:
        return []
    code = finished[0].data.tags.get(f"{TAG}code")  # newest first
    chosen: dict[str, Any] = {}
    for run in finished:
        if run.data.tags.get(f"{TAG}code") == code:
            chosen.setdefault(run.data.tags.get(f"{TAG}key", run.info.run_id), run)
    return list(chosen.values())


def as_frame(runs: list[Any]) -> pd.DataFrame:
    """Runs as ``mlflow.search_runs`` frames them (``run_id``, ``status``, ``params.*``, ``metrics.*``, ``tags.*``),
    built from the client's results: the fluent search would set the process's tracking URI (and its environment
    variable, which every later subprocess inherits)."""
    rows = [{"run_id": run.info.run_id, "status": run.info.status,
             **{f"params.{k}": v for k, v in run.data.params.items()},
             **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
             **{f"tags.{k}": v for k, v in run.data.tags.items()}} for run in runs]
    return pd.DataFrame(rows)


def samples(mlflow: Any, claim: Claim, parents: list[Any]) -> pd.DataFrame:
    """The claim's samples from ``parents``, shaped like ``mlflow.search_runs`` output (one row a run)."""
    if not parents:
        return pd.DataFrame()
    if claim.unit == "search":
        frame = as_frame(parents)
    else:
        children = [child for parent in parents for child in mlflow.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=10_000)]
        frame = as_frame(children)
    if claim.read_at == "selected" and not frame.empty:
        frame = _with_selected(mlflow, claim, frame)
    return frame


def compared_metrics(claim: Claim) -> list[str]:
    spec = claim.comparison
    return sorted({spec.metric, getattr(spec, "b_metric", None) or spec.metric})


def _with_selected(mlflow: Any, claim: Claim, frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``metrics.selected/<m>``: each run's ``m`` at its validation-selected report."""
    space = str(REPO / claim.space) if (REPO / claim.space).is_file() else claim.space  # a path, or a space's name
    mode = registry.get(spaces.load_space(space).trainable).mode(claim.select_metric)
    frame = frame.copy()
    for metric in compared_metrics(claim):
        values = []
        for run_id in frame["run_id"]:
            select = {m.step: m.value for m in mlflow.get_metric_history(run_id, claim.select_metric)}
            reported = {m.step: m.value for m in mlflow.get_metric_history(run_id, metric)}
            steps = [s for s in sorted(select) if s in reported]
            if not steps:
                values.append(float("nan"))
                continue
            best = (min if mode == "min" else max)(steps, key=lambda s: select[s])  # first of ties: sorted steps
            values.append(reported[best])
        frame[claims.metric_column(metric, "selected")] = values
    return frame


def decide(store: Any, claim: Claim, parents: list[Any]) -> tuple[claims.Verdict, pd.DataFrame]:
    """The claim's verdict and arms table from the samples of ``parents`` (none: too few runs)."""
    frame = samples(store, claim, parents)
    if frame.empty:
        nan = float("nan")
        nothing = claims.Verdict("too few runs", nan, (nan, nan), nan, 0, 0, "no runs", claim.comparison.level)
        return nothing, pd.DataFrame(columns=["arm", "metric", "mean", "std", "n"])
    return claims.decide(claim, frame), claims.arm_summary(claim, frame)


def log_verdict(mlflow: Any, parents: list[Any], claim: Claim, verdict: claims.Verdict, table: pd.DataFrame) -> None:
    """The verdict on every parent run it was decided from: tags to filter on, and the arms' table as an artifact."""
    prefix = verdict_tag(claim, "")  # a run shared by several claims carries each one's verdict
    tags = {f"{prefix}verdict": verdict.outcome, f"{prefix}effect": f"{verdict.effect:.6g}",
            f"{prefix}interval": f"{verdict.interval[0]:.6g} {verdict.interval[1]:.6g}",
            f"{prefix}p": f"{verdict.p:.6g}", f"{prefix}n": f"{verdict.n_a} {verdict.n_b}",
            f"{prefix}test": f"{verdict.test} at {verdict.level:.0%}", f"{prefix}verdict_line": verdict.line(),
            f"{prefix}decided_from": " ".join(r.info.run_id for r in parents)}
    text = f"# {claim.name}: {verdict.line()}\n\n{claim.sentence}\n\n{markdown_table(table)}"
    for run in parents:
        for key, value in tags.items():
            mlflow.set_tag(run.info.run_id, key, value)
        mlflow.log_text(run.info.run_id, text, f"repro/{claim.name}.md")


def verdict_tag(claim: Claim, field: str) -> str:
    """The tag of a claim's verdict ``field`` on a parent run (``repro.CLAIM.verdict_line``)."""
    return f"{TAG}{claim.name}.{field}"
