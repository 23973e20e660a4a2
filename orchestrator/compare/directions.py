"""Which metric to rank by, in which direction, and which metric chooses a trial's epoch: read from the registry.

Each trainable declares its metrics with "min" or "max" and its primary (validation) metric. The runs name their
trainable in the ``trainable`` tag. Only runs of a trainable that is no longer registered (or untagged runs) fall
back to the sweep's own params, the search space file, and last to a guess from the metric's name; the output says
so in a note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from orchestrator import cli
from orchestrator.compare.select import is_test_metric
from trainables import registry

# Only for metrics of unregistered trainables: names that are better when larger; everything else ranks by min.
_MAX_WORDS = ("accuracy", "acc", "reward", "return", "score", "auc", "f1", "precision", "recall", "iou", "map",
              "samples_per_second", "throughput")


def guess_mode(metric: str) -> str:
    """A direction guessed from a metric's name (accuracy, reward, ... max; error, loss, latency, ... min)."""
    return "max" if any(word in metric.lower().split("_") or metric.lower().startswith(word)
                        for word in _MAX_WORDS) else "min"


def parse_objectives(text: str, count: int | None = None) -> list[tuple[str, str | None]]:
    """``accuracy:max,latency_ms`` -> [("accuracy", "max"), ("latency_ms", None)]; None: the declared direction."""
    objectives: list[tuple[str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, colon, mode = part.partition(":")
        if not name or (colon and mode not in ("min", "max")):
            raise cli.UserError(f"'{part}' is not METRIC, METRIC:min or METRIC:max")
        objectives.append((name, mode or None))
    if count is not None and len(objectives) != count:
        example = "accuracy:max,latency_ms:min" if count == 2 else "reward:max"
        raise cli.UserError(f"'{text}' names {len(objectives)} metric(s); give {count}, e.g. {example}")
    return objectives


@dataclass
class Directions:
    """The declarations of the trainables the runs used; ``notes`` collects what the output must say (a guessed
    direction, an unregistered trainable, an override of a declaration)."""

    parents: pd.DataFrame
    trainables: Sequence[str]
    specs: dict[str, registry.TrainableSpec] = field(default_factory=dict)
    unregistered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, parents: pd.DataFrame, trainables: Sequence[str]) -> Directions:
        found = cls(parents, list(trainables))
        for name in trainables:
            try:
                found.specs[name] = registry.get(name)
            except registry.ConfigError:
                found.unregistered.append(name)
        return found

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _declared(self, metric: str) -> dict[str, str]:
        return {name: spec.metrics[metric] for name, spec in self.specs.items() if metric in spec.metrics}

    def _logged(self, key: str) -> list[str]:
        return [str(v) for v in self.parents.get(f"params.{key}", pd.Series(dtype=object)).dropna().unique()]

    def mode(self, metric: str, explicit: str | None = None) -> tuple[str, str]:
        """(direction of ``metric``, where it came from): ``explicit`` (a command-line mode), else the trainables'
        declaration; else (unregistered or untagged runs only) the sweep's params, the space file, the name."""
        declared = self._declared(metric)
        modes = set(declared.values())
        if len(modes) > 1:
            raise cli.UserError(f"the trainables declare opposite directions for '{metric}' "
                                f"({', '.join(f'{n}: {m}' for n, m in sorted(declared.items()))}): compare them "
                                "separately or give --mode")
        if explicit:
            if modes and explicit not in modes:
                self._note(f"{metric}: {explicit} overrides the declared direction {modes.pop()} "
                           f"({', '.join(sorted(declared))})")
            return explicit, "--mode"
        if declared:
            return modes.pop(), f"declared by {', '.join(sorted(declared))}"
        sweep_mode = self._sweep_mode(metric)
        if self.specs and not self.unregistered:
            if sweep_mode:  # a metric the orchestrator itself computes and ranks by (the NAS reward)
                return sweep_mode, "the sweep's params"
            declared_all = "; ".join(f"{n}: {', '.join(f'{m} ({d})' for m, d in sorted(s.metrics.items())) or 'none'}"
                                     for n, s in sorted(self.specs.items()))
            raise cli.UserError(f"'{metric}' has no declared direction (declared metrics: {declared_all}): "
                                "give --mode min or --mode max")
        if sweep_mode:
            mode, source = sweep_mode, "the sweep's params"
        else:
            mode, source = self._space_mode(metric) or (guess_mode(metric), "the metric's name")
        why = (f"trainable {', '.join(repr(n) for n in self.unregistered)} is no longer registered"
               if self.unregistered else "the runs carry no trainable tag")
        self._note(f"{why}: the direction of {metric} ({mode}) comes from {source}, not from a declaration")
        return mode, source

    def _sweep_mode(self, metric: str) -> str | None:
        if metric not in self._logged("metric"):
            return None
        rows = self.parents[self.parents.get("params.metric") == metric]
        modes = rows.get("params.mode", pd.Series(dtype=object)).dropna().unique()
        return str(modes[0]) if len(modes) else None

    def _space_mode(self, metric: str) -> tuple[str, str] | None:
        from orchestrator import spaces

        for space_name in self._logged("space"):
            try:
                space = spaces.load_space(space_name)
            except Exception:  # a space file renamed or from another checkout: fall back on the name
                continue
            if space.metric == metric:
                return space.mode, f"search space '{space_name}'"
        return None

    def metric(self, explicit: str | None) -> str:
        """--metric, else the sweep's ``metric`` param, else the trainables' primary metric."""
        if explicit:
            return explicit
        logged = self._logged("metric")
        if len(logged) > 1:
            raise cli.UserError(f"the sweeps rank by different metrics ({', '.join(logged)}): give --metric")
        if logged:
            return logged[0]
        primaries = {spec.primary for spec in self.specs.values() if spec.primary}
        if len(primaries) == 1 and not self.unregistered:
            return primaries.pop()
        raise cli.UserError("these runs do not say which metric to rank by: give --metric")

    def selection(self, explicit: str | None, ranked: str) -> str:
        """The metric whose best step stands for a run with ``--at best``: --select, else the trainables' primary
        (validation) metric, else (unregistered) the sweep's metric or the ranked one. Never a test metric."""
        choice = explicit
        if not choice:
            primaries = {spec.primary for spec in self.specs.values() if spec.primary}
            if len(primaries) > 1:
                raise cli.UserError(f"the trainables' primary metrics differ ({', '.join(sorted(primaries))}): "
                                    "give --select METRIC")
            if primaries and not self.unregistered:
                choice = primaries.pop()
            else:
                logged = self._logged("metric")
                choice = next((m for m in [*logged, ranked] if not is_test_metric(m)), None)
                if choice:
                    self._note(f"no registered primary metric: the best step is chosen by {choice}")
        if not choice or is_test_metric(choice):
            raise cli.UserError(f"--at best chooses each run's epoch by a validation metric, never by a test metric"
                                f"{f' ({choice})' if choice else ''}: give --select with a validation metric")
        return choice
