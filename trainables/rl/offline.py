"""Offline datasets: record one from behaviour policies, check one against an environment, feed one to RLlib.

Recording writes RLlib's column format, the one ``OfflineSingleAgentEnvRunner`` writes with
``output_write_episodes=False``: one Parquet row per transition with ``eps_id``, ``obs`` and ``new_obs``
(compressed with RLlib's ``pack``), ``actions``, ``rewards``, ``terminateds``, ``truncateds`` and ``t``, so any
RLlib offline algorithm reads it with its defaults. The episodes are stepped here in one process (no Ray needed),
which is what makes a mixture of policies, per-policy stats and exact episode counts simple. Reading also accepts
datasets RLlib itself recorded in its default episode format (one msgpack'd ``SingleAgentEpisode`` per row).

Behaviour policies (``policies`` of :func:`record_dataset`, one string each)::

    random                          uniform random actions
    checkpoint:PATH                 greedy actions of an RLlib RLModule saved in PATH: our trainables' checkpoint
                                    (PATH/algorithm/...), an RLlib algorithm checkpoint, an RLModule directory, or
                                    a directory holding such checkpoints (the newest one is used)
    checkpoint:PATH@eps=0.3         the same with probability 0.3 of a uniform random action instead
    SPEC@episodes=50                any of the above with its own episode count (default: ``episodes``)

``dataset.json`` next to the Parquet files holds the env id, the spaces and the stats :func:`record_dataset` returns.
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.checkpoint import CheckpointError
from trainables.registry import ConfigError
from trainables.rl.pickle_imports import check_pickle_imports

STATS_FILE = "dataset.json"
DATA_FILE = "transitions.parquet"
# The columns a transition dataset must have for CRR / BC (RLlib's names, ray.rllib.core.columns.Columns).
REQUIRED_COLUMNS = ("obs", "actions", "rewards", "new_obs", "terminateds")
EPISODES_COLUMN = "item"
# CPUs of the one Ray Data actor that turns rows into train batches (OfflinePreLearner). Ray Data's default actor
# pool deadlocks on 2 CPUs (NOTES); and inside a Tune trial that holds 1 of 2 CPUs, a 0.5-CPU actor leaves too little
# for Ray Data's 1-CPU file-listing task (measured: hangs). A 0-CPU actor shares the trial's core instead.
PRELEARNER_CPUS = 0  # ray.data.from_items(list of bytes) names its single column "item"

Policy = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class PolicySpec:
    """One behaviour policy of a recording: ``kind`` is ``random`` or ``checkpoint``."""

    text: str
    kind: str
    path: str | None = None
    eps: float = 0.0
    episodes: int | None = None


def parse_policy(text: str) -> PolicySpec:
    """``random`` | ``checkpoint:PATH`` with optional ``@eps=E,episodes=N``; ConfigError otherwise."""
    body, _, options = text.partition("@")
    params: dict[str, str] = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("eps", "episodes"):
            raise ConfigError(f"policy {text!r}: unknown option {item!r} (known: eps=FLOAT, episodes=INT)")
        params[key] = value
    try:
        eps = float(params.get("eps", 0.0))
        episodes = int(params["episodes"]) if "episodes" in params else None
    except ValueError:
        raise ConfigError(f"policy {text!r}: eps must be a number and episodes an integer") from None
    if not 0.0 <= eps <= 1.0 or (episodes is not None and episodes < 1):
        raise ConfigError(f"policy {text!r}: eps must be in [0, 1] and episodes >= 1")
    if body == "random":
        return PolicySpec(text, "random", eps=eps, episodes=episodes)
    if body.startswith("checkpoint:") and body[len("checkpoint:"):]:
        return PolicySpec(text, "checkpoint", os.path.expanduser(body[len("checkpoint:"):]), eps, episodes)
    raise ConfigError(f"policy {text!r} is not 'random' or 'checkpoint:PATH' (optionally '@eps=E,episodes=N')")


def find_module_dir(path: str, module_id: str = "default_policy") -> str:
    """The RLModule directory inside an RLlib or trainable checkpoint ``path``; ConfigError if there is none."""
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint path {path!r} does not exist")
    for root in (path, os.path.join(path, "algorithm")):
        for sub in ("learner_group/learner/rl_module", "rl_module", "."):
            candidate = os.path.normpath(os.path.join(root, sub, module_id))
            if os.path.isfile(os.path.join(candidate, "class_and_ctor_args.pkl")):
                return candidate
    if os.path.isfile(os.path.join(path, "class_and_ctor_args.pkl")) and os.path.isfile(
        os.path.join(path, "module_state.pkl")
    ):
        return path
    # A trial or experiment directory: the newest checkpoint below it (e.g. .../checkpoint_000007/algorithm/...).
    found = glob.glob(os.path.join(glob.escape(path), "**", "rl_module", module_id, "class_and_ctor_args.pkl"),
                      recursive=True)
    if found:
        return os.path.dirname(max(found, key=lambda f: (os.path.getmtime(f), f)))
    raise ConfigError(f"no RLlib RLModule '{module_id}' found in checkpoint {path!r}")


def load_checkpoint_policy(path: str, action_space: Any, *, normalized: bool | None = None,
                           observation_space: Any = None) -> Policy:
    """The greedy policy of the RLModule saved in ``path``. Box actions: ``normalized`` policies act in [-1, 1] and
    are mapped to the env's bounds (RLlib's unsquash), others are clipped to them; ``None``: as the checkpoint's
    ``trainable.json`` says (CRR: normalized, BC: env scale; normalized when there is no such file).

    A module that cannot be loaded, or (given ``observation_space``) cannot act on one of its observations, raises
    :class:`~trainables.checkpoint.CheckpointError` with one line naming the file or folder, never RLlib's
    traceback."""
    import gymnasium as gym
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModule

    module_dir = find_module_dir(path)
    if normalized is None:
        normalized = bool(_produced_by(module_dir).get("normalize_actions", True))
    check_module_files(module_dir)
    try:
        module = RLModule.from_checkpoint(module_dir)
        if not isinstance(module, RLModule):
            raise TypeError(f"{type(module).__name__} is not an RLModule")
        module.eval()
        dist_cls = module.get_inference_action_dist_cls()
    except Exception as err:  # noqa: BLE001 (unpickling and set_state raise anything a corrupt file provokes)
        raise CheckpointError(f"corrupt checkpoint {module_dir}: RLlib cannot load its module from "
                              f"{CTOR_FILE} and {STATE_FILE}.pkl ({_short(err)})") from None

    def act(obs: np.ndarray) -> Any:
        x = torch.as_tensor(obs[None])
        if x.is_floating_point():
            x = x.float()  # uint8 frames stay uint8: the DQN network scales them itself
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: x})
            if Columns.ACTIONS in out:
                action = out[Columns.ACTIONS]
            else:
                action = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS]).to_deterministic().sample()
        action = action[0].cpu().numpy()
        if isinstance(action_space, gym.spaces.Discrete):
            return int(action)
        low, high = action_space.low, action_space.high
        if normalized:
            action = low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (high - low)
        return np.clip(action, low, high).astype(np.float32)

    if observation_space is not None:
        # A module of another environment (other observation shape or action count) loads fine and fails on its
        # first step: try one step now, so that is one line too.
        try:
            action = act(np.asarray(observation_space.sample()))
            if not action_space.contains(action):
                raise ValueError(f"action {action!r} is not in the env's action space {action_space}")
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {module_dir} does not fit this environment "
                                  f"({observation_space} -> {action_space}): {_short(err)}") from None
    return act


# The files of an RLlib RLModule checkpoint (ray.rllib.utils.checkpoints.Checkpointable), both pickles. RLlib
# unpickles them with plain pickle: no weights-only mode exists for them (the first holds the module's class), so a
# checkpoint from someone else could run code when it is loaded; check_module_files refuses a file that imports
# anything an RLlib module checkpoint does not (trainables/rl/pickle_imports.py).
CTOR_FILE = "class_and_ctor_args.pkl"
STATE_FILE = "module_state"


def check_module_files(module_dir: str) -> None:
    """Checks before RLlib unpickles a module: both files are there and look like whole pickles (protocol 2+
    starts with 0x80 and every pickle ends with the STOP opcode '.'), and they import only what a module checkpoint
    needs (read from the opcodes, nothing run); CheckpointError naming the file otherwise. Catches truncated and
    overwritten files with the file's name instead of a pickle error, and files that would run code."""
    if os.path.isfile(os.path.join(module_dir, STATE_FILE + ".msgpack")):
        names = [CTOR_FILE]  # a msgpack state (RLlib's use_msgpack) is checked when RLlib reads it
    else:
        names = [CTOR_FILE, STATE_FILE + ".pkl"]
    for name in names:
        file = os.path.join(module_dir, name)
        try:
            size = os.path.getsize(file)
            with open(file, "rb") as handle:
                first = handle.read(1)
                handle.seek(max(size - 1, 0))
                last = handle.read(1)
        except OSError as err:
            raise CheckpointError(f"corrupt checkpoint: cannot read {file} ({err.strerror or err})") from None
        if size < 2 or first != b"\x80" or last != b".":
            raise CheckpointError(f"corrupt checkpoint file {file}: truncated or not a pickle ({size} bytes)")
        check_pickle_imports(file)


def _short(err: BaseException) -> str:
    """``Type: message`` on one line, at most 300 characters."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _produced_by(module_dir: str) -> dict[str, Any]:
    """The ``trainable.json`` of the trainable checkpoint holding ``module_dir`` ({} for a bare RLlib checkpoint);
    CheckpointError naming the file when it is there but is not a JSON object."""
    from trainables.rl.common import TRAINABLE_FILE

    folder = os.path.abspath(module_dir)
    for _ in range(6):  # <ckpt>/algorithm/learner_group/learner/rl_module/default_policy
        candidate = os.path.join(folder, TRAINABLE_FILE)
        if os.path.isfile(candidate):
            try:
                with open(candidate) as handle:
                    produced = json.load(handle)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"corrupt checkpoint file {candidate}: not JSON ({_short(err)})") from None
            if not isinstance(produced, dict):
                raise CheckpointError(f"corrupt checkpoint file {candidate}: not a JSON object")
            return produced
        folder = os.path.dirname(folder)
    return {}


def _return_stats(returns: list[float], rows: int) -> dict[str, float]:
    r = np.asarray(returns, dtype=np.float64)
    return {"episodes": len(r), "rows": rows, "return_mean": float(r.mean()), "return_std": float(r.std()),
            "return_min": float(r.min()), "return_max": float(r.max())}


def record_dataset(env_id: str, policies: list[str], episodes: int, out_dir: str, seed: int = 0) -> dict[str, Any]:
    """Step ``env_id`` with each behaviour policy for ``episodes`` episodes (or its own ``@episodes=N``) and write
    the transitions as one RLlib-readable Parquet file in ``out_dir``; returns and writes the dataset's stats."""
    import gymnasium as gym
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.rllib.utils.compression import pack

    from trainables.rl.common import check_env_id

    check_env_id(env_id)
    specs = [parse_policy(p) for p in policies]
    if not specs or episodes < 1:
        raise ConfigError("record needs at least one policy and episodes >= 1")
    if os.path.isdir(out_dir) and glob.glob(os.path.join(out_dir, "**", "*.parquet"), recursive=True):
        raise ConfigError(f"output directory {out_dir!r} already holds a dataset; choose a new one")
    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    rows: list[dict[str, Any]] = []
    per_policy: dict[str, dict[str, float]] = {}
    all_returns: list[float] = []
    episode_index = 0
    for spec in specs:
        act = None
        if spec.kind == "checkpoint":
            act = load_checkpoint_policy(spec.path, env.action_space, observation_space=env.observation_space)
        returns, start_rows = [], len(rows)
        for _ in range(spec.episodes or episodes):
            obs, _ = env.reset(seed=seed * 100_003 + episode_index)
            episode_index += 1
            eps_id, total, t, done = uuid.uuid4().hex, 0.0, 0, False
            while not done:
                random_step = act is None or rng.random() < spec.eps
                action = env.action_space.sample() if random_step else act(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                rows.append({"eps_id": eps_id, "agent_id": None, "module_id": None, "obs": pack(np.asarray(obs)),
                             "actions": action.tolist() if isinstance(action, np.ndarray) else int(action),
                             "rewards": float(reward), "new_obs": pack(np.asarray(next_obs)),
                             "terminateds": bool(terminated), "truncateds": bool(truncated), "t": t})
                total, t, obs, done = total + float(reward), t + 1, next_obs, terminated or truncated
            returns.append(total)
        all_returns += returns
        per_policy[spec.text] = _return_stats(returns, len(rows) - start_rows)
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(out_dir, DATA_FILE))
    stats = {"env": env_id, "seed": seed, "format": "rllib-columns", "observation_space": repr(env.observation_space),
             "action_space": repr(env.action_space), "overall": _return_stats(all_returns, len(rows)),
             "policies": per_policy}
    with open(os.path.join(out_dir, STATS_FILE), "w") as handle:
        json.dump(stats, handle, indent=2)
    return stats


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`inspect_dataset` found: the Parquet files and whether rows are episodes or transitions."""

    path: str
    files: list[str]
    episodes_format: bool
    num_rows: int


def inspect_dataset(path: str, env_id: str | None = None) -> DatasetInfo:
    """Check that ``path`` is an RLlib offline dataset (and, given ``env_id``, recorded in that environment's
    spaces); raises ConfigError with one line naming what is wrong."""
    import pyarrow.parquet as pq

    if not path:
        raise ConfigError("no dataset given: set data=DIR (record one with `python -m orchestrator.rl record`)")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ConfigError(f"dataset path {path!r} does not exist")
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if not files:
        raise ConfigError(f"dataset path {path!r} holds no .parquet files")
    try:
        schema = pq.read_schema(files[0])
        num_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception as err:  # noqa: BLE001 (pyarrow raises several types for a corrupt file)
        raise ConfigError(f"dataset file {files[0]!r} is not readable Parquet: {err}") from None
    names = set(schema.names)
    episodes_format = names == {EPISODES_COLUMN}
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if not episodes_format and missing:
        raise ConfigError(f"dataset {path!r} does not have RLlib's offline schema: missing column(s) "
                          f"{', '.join(missing)} (has {', '.join(sorted(names))})")
    info = DatasetInfo(path, files, episodes_format, num_rows)
    if env_id is not None:
        _check_spaces(info, env_id)
    return info


def _check_spaces(info: DatasetInfo, env_id: str) -> None:
    """The recorded env id (dataset.json) and the first transition's observation and action fit ``env_id``."""
    import gymnasium as gym
    import pyarrow.parquet as pq
    from ray.rllib.utils.compression import unpack_if_needed

    stats_file = os.path.join(info.path, STATS_FILE)
    if os.path.isfile(stats_file):
        with open(stats_file) as handle:
            recorded = json.load(handle).get("env")
        if recorded and recorded != env_id:
            raise ConfigError(f"dataset {info.path!r} was recorded in {recorded}, not in {env_id}")
    if info.episodes_format:
        return  # episodes are opaque msgpack blobs; RLlib checks them when it reads them
    first = pq.ParquetFile(info.files[0]).read_row_group(0, columns=["obs", "actions"]).slice(0, 1).to_pylist()[0]
    env = gym.make(env_id)
    obs = np.asarray(unpack_if_needed(first["obs"]))
    if obs.shape != env.observation_space.shape:
        raise ConfigError(f"dataset {info.path!r} has observations of shape {obs.shape}, but {env_id} has "
                          f"{env.observation_space.shape}")
    action = np.asarray(first["actions"])
    expected = () if isinstance(env.action_space, gym.spaces.Discrete) else env.action_space.shape
    if action.shape != expected:
        raise ConfigError(f"dataset {info.path!r} has actions of shape {action.shape}, but {env_id} has {expected}")


# Ray Data reads the dataset with tasks of 1 CPU each. Left to the cluster, they need a CPU no trial holds: two
# offline trials on a 2-CPU machine took both and the read never started (measured: "Cluster resources are not enough
# to run any task from TaskPoolMapOperator[ReadFilesParquetV2]", a hang). So an offline trial reserves one more CPU in
# its own placement group and Ray Data's tasks run there.
DATA_BUNDLE = {"CPU": 1.0}


def offline_placement(bundles: list[dict[str, float]]) -> list[dict[str, float]]:
    """The algorithm's bundles plus the one Ray Data's read tasks run in."""
    return [*bundles, dict(DATA_BUNDLE)]


def keep_data_in_trial_placement() -> None:
    """Schedule this process's Ray Data tasks inside the trial's placement group (its :data:`DATA_BUNDLE`).

    Outside a placement group (a local run, a test without Tune) Ray Data keeps its default scheduling.
    """
    import ray
    from ray.data import DataContext
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():  # not in a trial; and get_current_placement_group() would start a Ray here
        return
    group = ray.util.get_current_placement_group()
    if group is None:
        return
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    context = DataContext.get_current()
    context.scheduling_strategy = strategy
    context.scheduling_strategy_large_args = strategy


def offline_data_kwargs(info: DatasetInfo, *, updates_per_iteration: int) -> dict[str, Any]:
    """Keyword arguments of ``AlgorithmConfig.offline_data`` for this dataset on a small machine.

    ``map_batches_kwargs``: one pre-learner actor (see :data:`PRELEARNER_CPUS`).
    ``dataset_num_iters_per_learner``: gradient steps per ``train()`` (required without remote learners).
    """
    return {
        "input_": [info.path],
        "input_read_episodes": info.episodes_format,
        "dataset_num_iters_per_learner": updates_per_iteration,
        "map_batches_kwargs": {"concurrency": 1, "num_cpus": PRELEARNER_CPUS},
        "iter_batches_kwargs": {"prefetch_batches": 1},
    }
