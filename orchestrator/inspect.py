"""``python -m orchestrator.inspect RUN_ID``: look inside a trained classifier recorded in MLflow.

Examples::

    python -m orchestrator.inspect 3f2c...e1 --fgsm 0.05 0.1 --saliency 8
    python -m orchestrator.inspect 3f2c...e1 --fgsm 0.01 0.02 0.05 --max-images 1000 --tracking-uri http://head:5000

``RUN_ID`` is a trial's child run of a sweep: its ``trainable`` tag, its ``config.json`` and its final
``checkpoint/`` artifacts say which net it trained and with which weights. The trainable's ``inspect`` tool
(every classifier registers one; :mod:`trainables.inspection`) rebuilds the net, measures its accuracy on the test
split under the fast gradient sign method at each epsilon (pixel units) and draws saliency maps. The results go
into the SAME run: metrics ``fgsm_{split}_accuracy_eps{eps}`` (MLflow allows dots in metric names; eps0 is the
clean accuracy of the same images), the images under the ``inspection/`` artifact folder, and a table on stdout.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, tracking
from orchestrator.tables import fmt_number
from trainables import registry

ARTIFACT_FOLDER = "inspection"


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.inspect",
        description="FGSM accuracy vs epsilon and saliency maps of a classifier's checkpoint recorded in MLflow; "
                    "logged into the same run.")
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow run of one trial (a child run of a sweep)")
    parser.add_argument("--fgsm", type=float, nargs="+", default=[0.05, 0.1], metavar="EPS",
                        help="epsilons in pixel units (images in [0, 1]); default 0.05 0.1 (0, clean, is added)")
    parser.add_argument("--saliency", type=int, default=8, metavar="N",
                        help="saliency maps of the first N test images (0: none); default 8")
    parser.add_argument("--max-images", type=int, default=0, metavar="N",
                        help="attack only the first N test images (0: all); default 0")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or "
                                               "sqlite:///mlflow.db in the working directory)")
    return parser


def metric_name(split: str, eps: float) -> str:
    """``fgsm_test_accuracy_eps0.05``: one metric per epsilon (MLflow steps are integers, epsilons are not)."""
    return f"fgsm_{split}_accuracy_eps{eps:g}"


def check_arguments(args: Any) -> None:
    bad = [eps for eps in args.fgsm if not (math.isfinite(eps) and 0.0 <= eps <= 1.0)]
    if bad:
        raise cli.UserError(f"--fgsm epsilons are pixel steps in [0, 1] (images in [0, 1]); got {bad[0]:g}")
    if args.saliency < 0 or args.max_images < 0:
        raise cli.UserError(f"--saliency and --max-images must be >= 0, got {args.saliency} and {args.max_images}")


def open_store(uri: str) -> Any:
    """The client of an existing store (an inspection never creates an empty sqlite store by mistake)."""
    tracking.check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise cli.UserError(f"no MLflow store at {uri} (run it where the sweep ran, or pass --tracking-uri)")
    return tracking.open_client(uri)


def read_run(client: Any, run_id: str, uri: str) -> tuple[Any, registry.TrainableSpec, Any]:
    """The run, its trainable and that trainable's ``inspect`` tool; a user error for anything missing."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise cli.UserError(f"no MLflow run '{run_id}' in {uri}") from None
    name = run.data.tags.get("trainable")
    if not name:
        raise cli.UserError(f"run {run_id} has no 'trainable' tag: not a run of orchestrator.sweep")
    spec = registry.get(name)
    tool = spec.tools.get("inspect")
    if tool is None:
        raise cli.UserError(f"run {run_id} trained '{name}', which is not a classifier: it offers no 'inspect' tool")
    if not client.list_artifacts(run_id, "checkpoint"):
        raise cli.UserError(f"run {run_id} has no checkpoint artifact (a parent run of a sweep, or a trial that "
                            f"never finished a checkpoint); inspect one of its trials' runs")
    return run, spec, tool


def download_config(client: Any, run_id: str, spec: registry.TrainableSpec, folder: str) -> dict[str, Any]:
    """The trial's config (its ``config.json`` artifact), resolved against the trainable as it is now."""
    if not any(a.path == "config.json" for a in client.list_artifacts(run_id)):
        raise cli.UserError(f"run {run_id} has no config.json artifact: cannot rebuild its net")
    path = client.download_artifacts(run_id, "config.json", folder)
    try:
        return spec.resolve(json.loads(Path(path).read_text()))
    except registry.ConfigError as err:
        raise cli.UserError(f"the config of run {run_id} does not fit trainable '{spec.name}' now: {err}") from None


def log_results(client: Any, run_id: str, result: Any, fgsm: Sequence[float]) -> None:
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(result.split, eps), float(acc), now, 0) for eps, acc in result.accuracy.items()]
    tags = [RunTag("inspection.fgsm", " ".join(f"{eps:g}" for eps in fgsm)),
            RunTag("inspection.images", str(result.images))]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    for path in result.files:
        client.log_artifact(run_id, path, artifact_path=ARTIFACT_FOLDER)


def print_table(run_id: str, trainable: str, result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    clean = result.accuracy[0.0]
    table = Table(title=f"FGSM (Goodfellow et al. 2015) on run {run_id[:12]} ({trainable}), "
                        f"{result.images} {result.split} images")
    for column in ("epsilon", "accuracy", "error", "drop"):
        table.add_column(column, justify="right")
    for eps, acc in sorted(result.accuracy.items()):
        table.add_row(f"{eps:g}", fmt_number(acc), fmt_number(1.0 - acc), fmt_number(clean - acc))
    Console(width=120).print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    client = open_store(uri)
    run, spec, tool = read_run(client, args.run_id, uri)
    with tempfile.TemporaryDirectory(prefix="inspect_") as tmp:
        config = download_config(client, args.run_id, spec, tmp)
        checkpoint = client.download_artifacts(args.run_id, "checkpoint", tmp)
        result = tool(config, checkpoint, eps=args.fgsm, saliency_images=args.saliency,
                      out_dir=str(Path(tmp) / ARTIFACT_FOLDER), max_images=args.max_images)
        log_results(client, args.run_id, result, args.fgsm)
    print_table(args.run_id, spec.name, result)
    names = ", ".join(metric_name(result.split, eps) for eps in sorted(result.accuracy))
    print(f"logged into run {args.run_id}: metrics {names}; artifacts {ARTIFACT_FOLDER}/ "
          f"({', '.join(Path(f).name for f in result.files)})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
