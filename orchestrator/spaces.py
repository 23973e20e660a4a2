"""Search-space files: a small YAML grammar over Ray Tune's sampling primitives.

A file in ``search_spaces/`` (or any path) reads::

    trainable: resnet            # a registered trainable
    description: stochastic-depth survival rate x schedule
    metric: val_error            # what the final table ranks by, and what a scheduler watches (default: the
                                 # trainable's primary metric)
    mode: min                    # optional: the trainable declares each metric's direction; a contradiction is
                                 # an error
    seeds: 2                     # repeats: each config runs with seed 0..seeds-1
    samples: 1                   # Tune num_samples (for random primitives)
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # optional; or --scheduler
    config:                      # fixed values over the trainable's defaults
      depth: 20
    space:                       # what is searched
      p_L: {grid: [0.2, 0.5, 0.8, 1.0]}
      sd_schedule: {grid: [linear, uniform]}

Primitives: ``grid`` (every value), ``choice`` (sampled), ``uniform``/``loguniform`` ``[low, high]``,
``randint`` ``[low, high)``. Everything is validated against the trainable's config before Ray starts, and grid
combinations that train the same experiment (equal configs after the trainable's canonical form) run once.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.registry import ConfigError, TrainableSpec

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
PRIMITIVES = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_LEVEL_KEYS = {"trainable", "description", "metric", "mode", "seeds", "samples", "scheduler", "config", "space"}
SCHEDULERS = ("none", "asha")


@dataclass
class SweepSpace:
    """A parsed search-space file."""

    name: str
    path: Path
    trainable: str
    metric: str | None = None  # None: the trainable's primary metric (filled in by validate)
    mode: str | None = None  # None: the trainable's declared direction of the metric (filled in by validate)
    description: str = ""
    seeds: int = 1
    samples: int = 1
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    fixed: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Filled in by validate when grid combinations train the same experiment: the combinations that run, and each
    # one that does not with the one it equals.
    variants: list[dict[str, Any]] | None = None
    collapsed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def with_overrides(self, overrides: Mapping[str, Any]) -> SweepSpace:
        """``--set key=value`` pins a key: it leaves the searched keys and joins the fixed ones."""
        searched = {k: v for k, v in self.searched.items() if k not in overrides}
        return SweepSpace(**{**self.__dict__, "fixed": {**self.fixed, **overrides}, "searched": searched})

    def swept_keys(self) -> list[str]:
        """The keys that vary between trials (seed last, when repeats are asked for)."""
        return list(self.searched) + (["seed"] if self.seeds > 1 else [])

    def validate(self, spec: TrainableSpec) -> dict[str, Any]:
        """Check every value the sweep can produce against ``spec``; returns the resolved base config.

        Grid and choice values are checked in every combination; continuous ranges at both ends. The metric and
        its direction come from the trainable's declaration (:meth:`resolve_metric`).
        """
        self.resolve_metric(spec)
        base = spec.resolve(self.fixed)
        for key in self.searched:
            if key not in spec.defaults:
                raise ConfigError(
                    f"space '{self.name}': trainable '{spec.name}' has no config key '{key}'; "
                    f"known keys: {', '.join(sorted(spec.defaults))}"
                )
        axes = [[(key, value) for value in _candidate_values(prim)] for key, prim in self.searched.items()]
        combos = itertools.islice(itertools.product(*axes), 20_000)
        for combo in combos:
            try:
                spec.resolve({**self.fixed, **dict(combo)})
            except ConfigError as err:
                where = ", ".join(f"{k}={v!r}" for k, v in combo)
                raise ConfigError(f"space '{self.name}' ({where}): {err}") from None
        self._collapse_identical(spec)
        return base

    def _collapse_identical(self, spec: TrainableSpec) -> None:
        """Run once what would run twice: grid combinations whose resolved configs are equal after the trainable's
        canonical form (``register(canonical=...)``, e.g. either schedule at p_L = 1) keep the first in grid order.

        Only for spaces that are all grid: a sampled key makes every trial a different config anyway.
        """
        self.variants, self.collapsed = None, []
        grids = [prim.get("grid") for prim in self.searched.values()]
        if not grids or any(values is None for values in grids) or math.prod(map(len, grids)) > 20_000:
            return
        kept: dict[str, dict[str, Any]] = {}
        for values in itertools.product(*grids):
            combo = dict(zip(self.searched, values, strict=True))
            identity = json.dumps(spec.canonical_form(spec.resolve({**self.fixed, **combo})), sort_keys=True,
                                  default=str)
            if identity in kept:
                self.collapsed.append((combo, kept[identity]))
            else:
                kept[identity] = combo
        if self.collapsed:
            self.variants = list(kept.values())

    def describe_collapsed(self) -> str:
        """``p_L=1.0 sd_schedule=uniform (= p_L=1.0 sd_schedule=linear)``, for each collapsed combination."""
        def text(combo: Mapping[str, Any]) -> str:
            return " ".join(f"{key}={value}" for key, value in combo.items())

        return "; ".join(f"{text(dropped)} (= {text(kept)})" for dropped, kept in self.collapsed)

    def search_alg(self) -> Any:
        """None (Tune expands the grids), or, when combinations collapsed, Tune's variant generator over those
        that run, each ``samples`` times (the seeds grid still multiplies them)."""
        if not self.variants:
            return None
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(points_to_evaluate=[dict(v) for v in self.variants for _ in range(self.samples)])

    def tune_samples(self) -> int:
        """Tune's ``num_samples``: one per explicit point when combinations collapsed, else the space's samples."""
        return len(self.variants) * self.samples if self.variants else self.samples

    def resolve_metric(self, spec: TrainableSpec) -> None:
        """Fill in ``metric`` (default: the primary one) and ``mode`` from what ``spec`` declares.

        A file's ``mode`` that contradicts the declaration is a :class:`ConfigError`; a trainable that declares no
        metrics (a notebook's) needs the file to give the mode.
        """
        self.metric = self.metric or spec.primary
        if not self.metric:
            raise ConfigError(f"space '{self.name}': give 'metric' (trainable '{spec.name}' declares no primary one)")
        if not spec.metrics:
            if self.mode is None:
                raise ConfigError(f"space '{self.name}': give 'mode' (trainable '{spec.name}' declares no metrics)")
            return
        declared = spec.mode(self.metric)
        if self.mode is not None and self.mode != declared:
            raise ConfigError(f"space '{self.name}': mode {self.mode} contradicts trainable '{spec.name}', whose "
                              f"{self.metric} is better when {'lower' if declared == 'min' else 'higher'} "
                              f"({declared}); leave 'mode' out")
        self.mode = declared

    def param_space(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The Tune ``param_space``: the full resolved config with searched keys replaced by Tune primitives."""
        from ray import tune

        space: dict[str, Any] = dict(base)
        for key, prim in self.searched.items():
            (kind, values), = prim.items()
            if self.variants:  # the search_alg's points set these keys; a domain they are valid in, for Tune's check
                space[key] = tune.choice(list(values))
            elif kind == "grid":
                space[key] = tune.grid_search(list(values))
            elif kind == "choice":
                space[key] = tune.choice(list(values))
            else:
                space[key] = getattr(tune, kind)(*values)
        if self.seeds > 1:
            space["seed"] = tune.grid_search([int(base["seed"]) + i for i in range(self.seeds)])
        return space

    def num_trials(self) -> int:
        """How many trials the sweep launches (grid product x samples x seeds)."""
        grid = len(self.variants) if self.variants else math.prod(len(p["grid"]) for p in self.searched.values()
                                                                   if "grid" in p)
        return grid * self.samples * self.seeds


def available_spaces() -> list[str]:
    """Names of the search spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str) -> SweepSpace:
    """Parse a space by name (``search_spaces/NAME.yaml``) or path; :class:`ConfigError` on any malformation."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SPACES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no search space '{name_or_path}' (looked for {path}); available: {', '.join(available_spaces())}"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"search space {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_space(raw, name=path.stem, path=path)


def parse_space(raw: Any, *, name: str, path: Path) -> SweepSpace:
    """Check the grammar of an already-loaded YAML document (see the module docstring)."""
    def fail(message: str) -> ConfigError:
        return ConfigError(f"search space {path}: {message}")

    if not isinstance(raw, dict):
        raise fail("must be a mapping with at least 'trainable'")
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise fail(f"unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    if not isinstance(raw.get("trainable"), str):
        raise fail("'trainable' must be given as a string")
    if not isinstance(raw.get("metric", ""), str):
        raise fail("'metric' must be a string")
    mode = raw.get("mode")
    if mode not in ("min", "max", None):
        raise fail(f"mode must be 'min' or 'max', got {mode!r}")
    for count in ("seeds", "samples"):
        if not isinstance(raw.get(count, 1), int) or raw.get(count, 1) < 1:
            raise fail(f"'{count}' must be a positive integer, got {raw.get(count)!r}")
    fixed = raw.get("config") or {}
    if not isinstance(fixed, dict):
        raise fail("'config' must be a mapping of fixed values")
    searched_raw = raw.get("space") or {}
    if not isinstance(searched_raw, dict):
        raise fail("'space' must be a mapping from config keys to primitives")
    searched = {key: _parse_primitive(key, prim, fail) for key, prim in searched_raw.items()}
    both = sorted(set(fixed) & set(searched))
    if both:
        raise fail(f"key(s) {', '.join(both)} are both fixed in 'config' and searched in 'space'")
    return SweepSpace(
        name=name,
        path=path,
        trainable=raw["trainable"],
        metric=raw.get("metric"),
        mode=mode,
        description=str(raw.get("description", "")),
        seeds=raw.get("seeds", 1),
        samples=raw.get("samples", 1),
        scheduler=parse_scheduler(raw.get("scheduler"), fail),
        fixed=dict(fixed),
        searched=searched,
    )


def parse_scheduler(raw: Any, fail: Any = None) -> dict[str, Any]:
    """``none``, ``asha`` or ``{type: asha, grace_period: .., reduction_factor: ..}``."""
    fail = fail or (lambda message: ConfigError(message))
    if raw is None:
        return {"type": "none"}
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict) or raw.get("type") not in SCHEDULERS:
        raise fail(f"scheduler must be one of {', '.join(SCHEDULERS)} (or a mapping with 'type'), got {raw!r}")
    allowed = {"type", "grace_period", "reduction_factor"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise fail(f"scheduler option(s) {', '.join(extra)} not understood; allowed: {', '.join(sorted(allowed))}")
    return dict(raw)


def _parse_primitive(key: str, prim: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(prim, dict) or len(prim) != 1:
        raise fail(f"'{key}' must be one primitive such as {{grid: [...]}}; got {prim!r}")
    (kind, values), = prim.items()
    if kind not in PRIMITIVES:
        raise fail(f"'{key}': unknown primitive '{kind}'; use one of {', '.join(PRIMITIVES)}")
    if not isinstance(values, list) or not values:
        raise fail(f"'{key}': {kind} needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
            raise fail(f"'{key}': {kind} needs [low, high] with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise fail(f"'{key}': loguniform needs low > 0, got {values!r}")
    return {kind: values}


def _candidate_values(prim: Mapping[str, Any]) -> list[Any]:
    (kind, values), = prim.items()
    if kind in ("grid", "choice"):
        return list(values)
    if kind == "randint":
        return [values[0], values[1] - 1]
    return list(values)


def absolute_paths(overrides: Mapping[str, Any], spec: TrainableSpec) -> dict[str, Any]:
    """The values of the keys the trainable declares as paths (``paths=``), made absolute: trials run in other
    working directories (and on other nodes). Nothing else is touched, whatever files the working directory holds."""
    out = dict(overrides)
    for key in spec.paths:
        value = overrides.get(key)
        if isinstance(value, str) and value and "://" not in value:
            out[key] = str(Path(value).expanduser().resolve())
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["epochs=2", "p_L=0.5", "lr_milestones=[0.5,0.75]"]`` -> typed values (YAML scalars)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not a valid YAML scalar or list") from None
    return overrides
