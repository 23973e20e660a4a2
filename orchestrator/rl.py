"""``python -m orchestrator.rl``: RLlib algorithms (DQN, CRR, BC, ...) as Tune trials tracked in MLflow.

Examples::

    python -m orchestrator.rl dqn --env CartPole-v1 --frames 30000               # one run, embedded local Ray
    python -m orchestrator.rl dqn --env ALE/Pong-v5 --frames 10000000 --num-env-runners 8 --gpus 1 --address auto
    python -m orchestrator.rl dqn --sweep dqn_atari --seeds 3                      # a Tune sweep (search_spaces/)
    python -m orchestrator.rl dqn --resume                                         # continue the latest dqn run
    python -m orchestrator.rl play ray_results/dqn-.../dqn_.../checkpoint_000009 --episodes 5 --gif pong.gif
    python -m orchestrator.rl record --env CartPole-v1 --policy random checkpoint:PATH --episodes 50 --out data/
    python -m orchestrator.rl crr --env CartPole-v1 --data data/ --weight-type exp --set beta=1.0
    python -m orchestrator.rl bc --env CartPole-v1 --data data/

A single run is a one-trial sweep: it gets the same MLflow parent/child runs, checkpoints, ``--resume`` and final
table as ``orchestrator.sweep`` (one executor, :mod:`orchestrator.executor`). The algorithm commands are the
registered trainables that reserve their own resources (RLlib env runners and learners); each one's flags are its
registered shorthands (``flags``), a plain run ranks by its declared primary metric, and ``play``/``record`` are
registered tools. The orchestrator reaches them only through the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator import cli, cluster, executor, spaces, sweep
from trainables import registry

CHECKPOINT_FILE_TOOL = "checkpoint_file"  # the file an RL checkpoint folder holds (names trainable and config)


def rl_algorithms() -> list[str]:
    """Registered trainables that reserve their own resources (RLlib algorithms); loads every trainable."""
    return [name for name in registry.names() if registry.get(name).placement is not None]


def flag_dest(key: str) -> str:
    return f"config__{key}"  # the argparse destination of a flag that sets config key ``key``


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m orchestrator.rl",
        description="Train RLlib algorithms as Tune trials tracked in MLflow, record offline data, play checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in rl_algorithms():
        spec = registry.get(name)
        sub = commands.add_parser(name, help=spec.description, description=spec.description)
        for flag, key in spec.flags.items():  # the algorithm's registered shorthands, typed by their defaults
            default = spec.defaults[key]
            kind = type(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else str
            budget = " (the budget)" if key == spec.budget[0] else ""
            sub.add_argument(flag, dest=flag_dest(key), type=kind, metavar=key.upper(),
                             help=f"sets {key}{budget}; default {default!r}")
        sub.add_argument("--sweep", help="search space name or YAML path for this algorithm (a Tune sweep)")
        sweep.add_run_arguments(sub)
        # An RL trial's resources come from its config (env runners, learner GPUs), not from these.
        sub.set_defaults(workers=1, cpus_per_trial=1.0, gpus_per_trial=0.0)

    play = commands.add_parser("play", help="play a trained checkpoint's policy (DQN: epsilon 0.05) for full games")
    play.add_argument("checkpoint", help="a checkpoint directory (or a trial directory: its latest checkpoint)")
    play.add_argument("--episodes", type=int, default=5)
    play.add_argument("--gif", help="write the first episode's frames to this GIF")
    play.add_argument("--seed", type=int, default=0)

    record = commands.add_parser("record", help="record an RLlib offline dataset (Parquet) from behaviour policies")
    record.add_argument("--env", required=True, help="gymnasium id, e.g. CartPole-v1")
    record.add_argument("--policy", nargs="+", action="extend", metavar="POLICY",
                        help="random, checkpoint:PATH, checkpoint:PATH@eps=0.3 or random@episodes=50; several make "
                        "a mixture of behaviour policies")
    record.add_argument("--episodes", type=int, default=100,
                        help="episodes per policy (a policy's own @episodes=N overrides it)")
    record.add_argument("--out", required=True, help="output directory")
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--address", help="join a running Ray cluster (default: an embedded local Ray)")
    record.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded local Ray")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "play":
        return play(args)
    if args.command == "record":
        return record(args)
    return executor.execute(
        args, argv, parse=build_parser().parse_args, plan=lambda a: sweep.plan(a, load_rl_space),
        prog="python -m orchestrator.rl", label=args.command,
        stem=Path(args.sweep).stem if args.sweep else args.command,
    )


def load_rl_space(args: argparse.Namespace) -> spaces.SweepSpace:
    """A one-trial space for a plain run, or the ``--sweep`` space file, with the flags and ``--set`` applied."""
    spec = registry.get(args.command)
    overrides = spaces.parse_overrides(args.set)
    for key in spec.flags.values():
        value = getattr(args, flag_dest(key), None)
        if value is not None:
            overrides[key] = value
    overrides = spaces.absolute_paths(overrides, spec)
    if args.sweep:
        space = spaces.load_space(args.sweep)
        if space.trainable != args.command:
            raise cli.UserError(f"search space '{space.name}' is for trainable '{space.trainable}', "
                                f"not '{args.command}'")
    else:  # ranked by the algorithm's declared primary metric and its direction (spaces.resolve_metric)
        space = spaces.SweepSpace(name=args.command, path=Path("<command line>"), trainable=args.command,
                                  description=spec.description)
    return sweep.apply_run_flags(space.with_overrides(overrides), args)


def play(args: argparse.Namespace) -> int:
    checkpoint = find_checkpoint(args.checkpoint)
    produced = read_trainable_file(checkpoint)
    spec = registry.get(produced["trainable"])
    if "play" not in spec.tools:
        raise cli.UserError(f"trainable '{spec.name}' has no play tool")
    if args.episodes < 1:
        raise cli.UserError(f"--episodes must be >= 1, got {args.episodes}")
    returns = spec.tools["play"](checkpoint, episodes=args.episodes, gif_path=args.gif, seed=args.seed)
    for index, value in enumerate(returns):
        print(f"episode {index + 1}: return {value:g}")
    mean = sum(returns) / len(returns)
    env = produced["config"].get("env") if isinstance(produced.get("config"), dict) else None
    print(f"{spec.name} on {env}: mean return {mean:.2f} over {len(returns)} episode(s)"
          + (f"; frames written to {args.gif}" if args.gif else ""))
    return 0


def record(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise cli.UserError(f"--episodes must be >= 1, got {args.episodes}")
    policies = args.policy or ["random"]  # --policy A B and --policy A --policy B both give [A, B]
    record_dataset = registry.tool("record")
    where = cluster.connect(args.address, num_cpus=args.num_cpus)
    print(f"recording {args.env} with {', '.join(policies)} ({args.episodes} episode(s) per policy) on {where}")
    stats: dict[str, Any] = record_dataset(env_id=args.env, policies=policies, episodes=args.episodes,
                                           out_dir=str(Path(args.out).expanduser().resolve()), seed=args.seed)
    print(json.dumps(stats, indent=2, default=str))
    return 0


def find_checkpoint(path: str) -> str:
    """``path`` itself when it holds a checkpoint, else the latest ``checkpoint_*`` below it."""
    root = Path(path).expanduser()
    if not root.exists():
        raise cli.UserError(f"checkpoint {path} does not exist")
    marker = registry.tool(CHECKPOINT_FILE_TOOL)
    if (root / marker).is_file():
        return str(root)
    candidates = sorted(root.rglob(marker), key=lambda p: (p.stat().st_mtime, str(p)))
    if not candidates:
        raise cli.UserError(f"{path} holds no RL checkpoint (no {marker} below it)")
    return str(candidates[-1].parent)


def read_trainable_file(checkpoint: str) -> dict[str, Any]:
    marker = registry.tool(CHECKPOINT_FILE_TOOL)
    try:
        produced = json.loads((Path(checkpoint) / marker).read_text())
    except (OSError, ValueError) as err:
        raise cli.UserError(f"corrupt checkpoint {checkpoint}: cannot read {marker} ({err})") from None
    if not (isinstance(produced, dict) and isinstance(produced.get("trainable"), str)):
        # (the config itself is the trainable's play tool's to check: it knows its keys and types)
        raise cli.UserError(f"corrupt checkpoint {checkpoint}: {marker} is not an object with a 'trainable' name")
    try:
        registry.get(produced["trainable"])
    except registry.ConfigError as err:
        raise cli.UserError(f"checkpoint {checkpoint}/{marker}: {err}") from None
    return produced


if __name__ == "__main__":
    sys.exit(cli.run(main))
