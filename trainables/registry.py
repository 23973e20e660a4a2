"""The trainable registry: the one door between the control plane and the methods.

Like timm's model registry: a method module says ``@register("resnet", defaults=..., metrics=..., ...)`` above its
train function, and everything else (the sweep CLI, the runner, compare, tests) reaches it with ``get("resnet")``.
A registration declares all the orchestrator may know about a method: its config keys and validators, its metrics
and their direction, the budget key and the reported metric that counts up to it, its command-line shorthands, its
tools, and the exception types that mean "the user's input is wrong".

Discovery is lazy: :data:`TRAINABLE_MODULES` maps each shipped trainable to the module whose import registers it, so
``get("resnet")`` imports ``trainables.resnet`` (and what it imports) and never RLlib. :func:`discover_all` imports
every module of the package; only what needs every trainable's registration (``--list``) pays for it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from trainables.context import Context

TrainFn = Callable[[dict[str, Any], "Context"], None]
Validator = Callable[[dict[str, Any]], None]
# A trial's resource bundles for a config (first bundle: the trial process); e.g. an RL trial's env runners.
Placement = Callable[[dict[str, Any]], list[dict[str, float]]]
# A config with the values that cannot change the experiment written one way (e.g. the schedule when p_L = 1).
Canonical = Callable[[dict[str, Any]], dict[str, Any]]
Mode = Literal["min", "max"]

# Shipped trainables: name -> the module whose import registers it. A test (tests/test_spaces_registry.py) checks
# that importing every module registers exactly these names, so a new method cannot be forgotten here.
TRAINABLE_MODULES: dict[str, str] = {
    "resnet": "trainables.resnet",
    "preact_resnet": "trainables.preact_resnet",
    "swapout": "trainables.swapout",
    "nas_child": "trainables.nas_child",
    "fmp_net": "trainables.fmp_net",
    "squeezenet": "trainables.squeezenet",
    "inception": "trainables.inception",
    "deep_compression": "trainables.deep_compression",
    "knn": "trainables.knn",
    "linear": "trainables.linear_classifier",
    "mlp": "trainables.mlp",
    "alexnet": "trainables.small_convnets",
    "vgg": "trainables.small_convnets",
    "googlenet": "trainables.small_convnets",
    "gumbel_vae": "trainables.gumbel_vae",
    "dcgan": "trainables.dcgan",
    "gan": "trainables.gan",
    "air": "trainables.air",
    "mask_rcnn": "trainables.mask_rcnn",
    "densecap": "trainables.densecap",
    "nerfies": "trainables.nerfies",
    "dqn": "trainables.rl.dqn",
    "crr": "trainables.rl.crr",
    "bc": "trainables.rl.bc",
}
# Tools (command-line helpers, protocols) -> the module whose registration provides them.
TOOL_MODULES: dict[str, str] = {
    "play": "trainables.rl.dqn",
    "checkpoint_file": "trainables.rl.dqn",
    "record": "trainables.rl.crr",
    "architecture_search": "trainables.nas_child",
}


class ConfigError(ValueError):
    """A user's config is wrong (unknown key, bad type, value out of range). The message is one readable line."""


@contextmanager
def as_config_error(*errors: type[Exception]) -> Iterator[None]:
    """Re-raise ``errors`` (whose messages are already one readable line: a dataset check's, an architecture rule's)
    as :class:`ConfigError`, so a validator that calls such a check reports like every other config mistake."""
    try:
        yield
    except errors as err:
        raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class TrainableSpec:
    """A registered trainable: train function, default config, validators and declarations (see :func:`register`)."""

    name: str
    train: TrainFn
    defaults: Mapping[str, Any]
    validators: tuple[Validator, ...] = ()
    description: str = ""
    placement: Placement | None = None
    tools: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Mode] = field(default_factory=dict)
    primary: str | None = None
    budget: tuple[str, str] = ("epochs", "epoch")
    flags: Mapping[str, str] = field(default_factory=dict)
    user_errors: tuple[type[BaseException], ...] = ()
    paths: tuple[str, ...] = ()
    canonical: Canonical | None = None

    def canonical_form(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with what the trainable declares irrelevant written one way: two configs with equal canonical
        forms train the same experiment (a sweep runs only one of them)."""
        return self.canonical(dict(config)) if self.canonical else dict(config)

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Merge ``overrides`` over the defaults and validate the result; raises :class:`ConfigError`."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"trainable '{self.name}' has no config key(s) {', '.join(map(repr, unknown))}; "
                f"known keys: {', '.join(sorted(self.defaults))}"
            )
        config = {**self.defaults, **{k: _coerce(self.name, k, v, self.defaults[k]) for k, v in overrides.items()}}
        for validate in self.validators:
            validate(config)
        return config

    def mode(self, metric: str) -> Mode:
        """The declared direction of ``metric``; :class:`ConfigError` naming the declared metrics otherwise."""
        try:
            return self.metrics[metric]
        except KeyError:
            declared = ", ".join(f"{m} ({d})" for m, d in sorted(self.metrics.items())) or "none"
            raise ConfigError(f"trainable '{self.name}' declares no metric '{metric}'; declared: {declared}") from None

    def is_complete(self, config: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
        """Whether a trial's last ``result`` reached its budget: ``result[reported] >= config[budget key]``.

        A config without the budget key has no budget to fall short of (complete).
        """
        key, reported = self.budget
        if key not in config:
            return True
        done = result.get(reported)
        return done is not None and done >= config[key]


@dataclass(frozen=True)
class ArchitectureSearch:
    """What a trainable offers an architecture search: ``tools={"architecture_search": ArchitectureSearch(...)}``.

    A search space is an ordered list of categorical decisions: ``get_space(name, blocks)`` (``blocks`` 0: the
    space's default size) returns an object with ``sizes`` (values per decision, in the controller's order) and
    ``describe(tokens)`` (a readable form). The searcher writes the keys below into each child's config and reads
    ``accuracy`` (higher is better) and ``latency`` (ms, lower is better) from every report. ``cache_key`` names a
    config key the search may point at one file shared by its children (e.g. a latency cache); ``columns`` are
    further reported values worth a column in the search's table (size, MACs).
    """

    spaces: tuple[str, ...]
    get_space: Callable[[str, int], Any]
    accuracy: str
    latency: str
    space_key: str
    blocks_key: str
    tokens_key: str
    arch_key: str
    index_key: str
    cache_key: str | None = None
    columns: tuple[str, ...] = ()

    def reserved(self) -> tuple[str, ...]:
        """The config keys the searcher chooses (a user may not pin them)."""
        return (self.space_key, self.blocks_key, self.tokens_key, self.arch_key, self.index_key)

    def child_config(self, base: Mapping[str, Any], space: str, blocks: int, tokens: list[int],
                     index: int) -> dict[str, Any]:
        """``base`` with one child's architecture: its space, size, tokens, readable form and sample index."""
        described = self.get_space(space, blocks).describe(tokens)
        return {**base, self.space_key: space, self.blocks_key: blocks, self.tokens_key: tokens,
                self.arch_key: described, self.index_key: index}


_REGISTRY: dict[str, TrainableSpec] = {}
_discovered = False


def register(
    name: str,
    *,
    defaults: Mapping[str, Any],
    validate: Validator | tuple[Validator, ...] = (),
    description: str | None = None,
    placement: Placement | None = None,
    tools: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Mode] | None = None,
    primary: str | None = None,
    budget: tuple[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    user_errors: tuple[type[BaseException], ...] = (),
    paths: tuple[str, ...] = (),
    canonical: Canonical | None = None,
) -> Callable[[TrainFn], TrainFn]:
    """Register ``fn(config, ctx)`` as trainable ``name``; ``defaults`` lists every key a config may set.

    - ``placement(config)``: the trial's resource bundles when it needs more than its own process (RLlib).
    - ``tools``: the method's helpers by name (e.g. ``play``, ``record``), found with :func:`tool`.
    - ``metrics``: every metric a sweep, compare or a final table may rank by -> ``"min"`` or ``"max"``;
      ``primary``: the one a sweep ranks by by default (a validation metric, never a test metric).
    - ``budget``: ``(config key, reported metric)``; a trial is complete when the metric reaches the key's value
      (default ``("epochs", "epoch")``).
    - ``flags``: command-line shorthands -> config keys (``{"--env": "env"}``) for the method's own CLI.
    - ``user_errors``: exception types of the method's code that mean the user's input is wrong (exit status 2).
    - ``paths``: config keys that hold local file or folder paths (made absolute on the driver, since trials run in
      other working directories and on other nodes).
    - ``canonical(config)``: the config with the values that provably cannot change the run written one way (the
      stochastic-depth schedule when p_L = 1); a sweep collapses configs whose canonical forms are equal.
    """
    validators = validate if isinstance(validate, tuple) else (validate,)
    metrics = dict(metrics or {})
    bad = {m: d for m, d in metrics.items() if d not in ("min", "max")}
    if bad:
        raise ValueError(f"trainable '{name}': metric directions must be 'min' or 'max', got {bad}")
    if primary is not None and primary not in metrics:
        raise ValueError(f"trainable '{name}': primary metric '{primary}' is not among its metrics {sorted(metrics)}")
    if budget is not None and budget[0] not in defaults:
        raise ValueError(f"trainable '{name}': budget key '{budget[0]}' is not a config key")
    unknown_flags = sorted(key for key in (flags or {}).values() if key not in defaults)
    if unknown_flags:
        raise ValueError(f"trainable '{name}': flags name unknown config keys {unknown_flags}")
    unknown_paths = sorted(key for key in paths if key not in defaults)
    if unknown_paths:
        raise ValueError(f"trainable '{name}': paths name unknown config keys {unknown_paths}")

    def decorator(fn: TrainFn) -> TrainFn:
        if name in _REGISTRY and _REGISTRY[name].train is not fn:
            raise ValueError(f"trainable '{name}' is registered twice")
        first_doc_line = next(iter((fn.__doc__ or "").strip().splitlines()), "")
        _REGISTRY[name] = TrainableSpec(
            name=name,
            train=fn,
            defaults=dict(defaults),
            validators=validators,
            description=description if description is not None else first_doc_line,
            placement=placement,
            tools=dict(tools or {}),
            metrics=metrics,
            primary=primary,
            budget=tuple(budget) if budget is not None else ("epochs", "epoch"),
            flags=dict(flags or {}),
            user_errors=tuple(user_errors),
            paths=tuple(paths),
            canonical=canonical,
        )
        return fn

    return decorator


def unregister(name: str) -> None:
    """Forget trainable ``name`` (test fixtures remove what they registered); no error if it is not registered."""
    _REGISTRY.pop(name, None)


def get(name: str) -> TrainableSpec:
    """The trainable registered as ``name``, importing only its module; :class:`ConfigError` if there is none."""
    if name not in _REGISTRY and name in TRAINABLE_MODULES:
        _import(TRAINABLE_MODULES[name])
        if name not in _REGISTRY:  # the table is out of date (a method moved): find it the slow way
            discover_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown trainable '{name}'; registered: {', '.join(names()) or '(none)'}") from None


def provider(tool_name: str) -> TrainableSpec:
    """The trainable that provides the tool ``tool_name``; :class:`ConfigError` if none does."""
    spec = _provider_loaded(tool_name)
    if spec is None and tool_name in TOOL_MODULES:
        _import(TOOL_MODULES[tool_name])
        spec = _provider_loaded(tool_name)
    if spec is None:  # not in the table, or the table is out of date: look everywhere
        discover_all()
        spec = _provider_loaded(tool_name)
    if spec is None:
        raise ConfigError(f"no trainable provides the tool '{tool_name}'")
    return spec


def _provider_loaded(tool_name: str) -> TrainableSpec | None:
    return next((spec for spec in _REGISTRY.values() if tool_name in spec.tools), None)


def tool(tool_name: str) -> Any:
    """The helper ``tool_name`` some trainable registered (e.g. ``record``); :class:`ConfigError` if none did."""
    return provider(tool_name).tools[tool_name]


def names() -> list[str]:
    """All trainable names, sorted: the shipped table's and any registered directly (tests, notebooks); no import."""
    return sorted(set(TRAINABLE_MODULES) | set(_REGISTRY))


def user_error_types() -> tuple[type[BaseException], ...]:
    """:class:`ConfigError` plus the user-error types declared by every trainable loaded so far."""
    found: dict[type[BaseException], None] = {ConfigError: None}
    for spec in list(_REGISTRY.values()):
        found.update(dict.fromkeys(spec.user_errors))
    return tuple(found)


def discover_all() -> None:
    """Import every module of the ``trainables`` package once (costs the RLlib import: ~several seconds)."""
    global _discovered
    if _discovered:
        return
    import trainables

    # Sub-packages too (trainables.rl.dqn); a module whose name starts with "_" is private.
    for module in pkgutil.walk_packages(trainables.__path__, prefix="trainables."):
        if not any(part.startswith("_") for part in module.name.split(".")) and module.name != "trainables.registry":
            _import(module.name)
    _discovered = True


def _import(module: str) -> None:
    importlib.import_module(module)


def _coerce(trainable: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the default's type; ints are accepted where floats are expected.

    A default of ``None`` accepts anything (e.g. an optional path), lists/tuples accept lists or tuples.
    """
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    elif isinstance(value, type(default)):
        return value
    raise ConfigError(
        f"trainable '{trainable}': {key}={value!r} should be a {type(default).__name__} (default {default!r})"
    )


# ---- small validator helpers shared by the methods -------------------------------------------------------------


def check_range(config: Mapping[str, Any], key: str, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``low <= config[key] <= high`` (``<`` on an open end)."""
    value = config[key]
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range: must be in {interval}")


def check_choice(config: Mapping[str, Any], key: str, choices: tuple[Any, ...] | list[Any]) -> None:
    """Raise :class:`ConfigError` unless ``config[key]`` is one of ``choices``."""
    if config[key] not in choices:
        raise ConfigError(f"{key}={config[key]!r} is not one of {', '.join(map(repr, choices))}")
