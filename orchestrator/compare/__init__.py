"""``python -m orchestrator.compare``: which setting won, by how much, and is it more than seed noise.

Reads the sweep layout of ``orchestrator.tracking`` (a parent run per sweep or search, a nested child run per trial)
with ``mlflow.search_runs`` into pandas, groups the trials by their swept parameters (seeds folded into mean, std,
n and a 95% t-interval), ranks the groups in the direction each trainable declares for the metric, tests the winner
against the runner-up, and writes tables, plots and a self-contained HTML report. With ``--at best`` a run stands
for the step its validation (primary) metric chose, and every other metric is reported at that step.

    python -m orchestrator.compare sd_rates
    python -m orchestrator.compare sd_rates --by p_L --metric test_error --at best --plots plots --html report.html
    python -m orchestrator.compare nas_space --pareto accuracy:max,latency_ms:min --reward reward:max --html nas.html

One job per module: ``read`` (MLflow into pandas), ``directions`` (metric, direction and selection metric from the
registry), ``select`` (the value and step that stand for a run), ``ranking`` (groups, intervals, the verdict),
``plots``, ``report`` (terminal, Markdown, HTML) and ``cli``.
"""

from orchestrator.compare.cli import Comparison, build_parser, compare_runs, main
from orchestrator.compare.directions import Directions, guess_mode, parse_objectives
from orchestrator.compare.ranking import Verdict, aggregate, group_label, group_values, top_two_verdict
from orchestrator.compare.read import (
    default_grouping,
    metric_histories,
    read_runs,
    resolve_experiments,
    split_runs,
    swept_keys,
    trainable_names,
    trial_table,
)
from orchestrator.compare.select import best_steps, final_values, selected_steps

__all__ = [
    "Comparison", "Directions", "Verdict", "aggregate", "best_steps", "build_parser", "compare_runs",
    "default_grouping", "final_values", "group_label", "group_values", "guess_mode", "main", "metric_histories",
    "parse_objectives", "read_runs", "resolve_experiments", "selected_steps", "split_runs", "swept_keys",
    "top_two_verdict", "trainable_names", "trial_table",
]
