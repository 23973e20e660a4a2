"""Environment frames per second of the ``dqn`` trainable's RLlib agent vs a minimal single-process PyTorch DQN loop.

Why: the issue's goal is RLlib/plain >= 0.7x, so that scaling out with Ray does not cost a large constant factor on
one machine. Both variants use the same pieces, in one process, one torch thread, interleaved per repeat
(rllib, plain, rllib, plain, ...):

- ``rllib``: ``build_algo_config`` of ``trainables.rl.dqn.config`` (the registered trainable's config: ``PaperDQN``'s
  loop over the frame-ring replay memory), local env runner (``num_env_runners=0``) and local learner;
  ``algo.train()`` calls of ``--steps`` agent steps each are timed after a warm-up call that fills the replay memory
  past ``learning_starts``.
- ``--stock`` adds ``rllib stock loop``: the same config run by RLlib's own ``DQN.training_step`` and
  ``EpisodeReplayBuffer`` with RLlib's default nan/inf gradient checks (what the trainable used before the frame
  ring), so the gain is measured side by side.
- ``plain``: ``atari.make_env`` (same preprocessing), ``build_q_network`` (same 2013 network), a uint8 ring buffer,
  epsilon-greedy acting, one RMSProp minibatch of 32 per ``train_freq`` = 4 agent steps (same update ratio and
  loss, target = online network as in the 2013 paper). Timed over ``--steps`` steps after the same warm-up.

``--profile`` adds a table of where each variant's time goes (cProfile of one timed chunk, cumulative seconds of
the main pieces).

    python bench/dqn_fps.py --game Pong --steps 2000 --repeats 3 --profile --markdown /tmp/dqn_fps.md
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import _common
import numpy as np
import torch
import torch.nn.functional as F

from trainables import registry
from trainables.rl import atari
from trainables.rl.dqn.config import build_algo_config, epsilon_at
from trainables.rl.dqn.network import build_q_network


def dqn_config(game: str, steps: int, warmup: int) -> dict[str, Any]:
    """The trainable's config as a bench runs it: no evaluation, one train() = ``steps`` agent steps."""
    return registry.get("dqn").resolve(
        {
            "env": game,
            "frames": 10**9,
            "learning_starts": warmup,
            "iteration_steps": steps,
            "eval_interval": 0,
            "replay_capacity": 20_000,
            # epsilon at its final 0.1 from the start: the rate of 90% of a paper-length run, and both variants then
            # run the network for almost every action (at epsilon ~1 the plain loop would skip the forward pass)
            "epsilon_frames": 4,
        }
    )


class RLlibAgent:
    def __init__(self, config: dict[str, Any], stock: bool = False) -> None:
        self.config = config
        algo_config = build_algo_config(config)
        if stock:  # RLlib's own loop and episode buffer (same intensity: RLlib's formula gives 32/4 with 0 runners)
            from ray.rllib.algorithms.dqn import DQN

            algo_config.algo_class = DQN
            algo_config.framework(torch_skip_nan_gradients=False).training(
                replay_buffer_config={
                    "type": "EpisodeReplayBuffer",
                    "capacity": config["replay_capacity"],
                    "no_local_replay_buffer": False,
                }
            )
        self.algo = algo_config.build_algo()
        while self._steps() < config["learning_starts"] + config["rollout_fragment_length"]:
            self.algo.train()  # warm-up: replay filled, updates running

    def _steps(self) -> float:
        return float(self.algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0))

    def chunk(self) -> tuple[float, float]:
        """(agent steps, seconds) of one train() call."""
        before, started = self._steps(), time.perf_counter()
        self.algo.train()
        return self._steps() - before, time.perf_counter() - started

    def stop(self) -> None:
        self.algo.stop()


class PlainAgent:
    """The minimal loop: act, store, and every ``train_freq`` steps one RMSProp update on 32 replayed transitions."""

    def __init__(self, config: dict[str, Any], seed: int = 0) -> None:
        self.config = config
        self.env = atari.make_env(atari.env_config_from(config))
        shape, n = self.env.observation_space.shape, self.env.action_space.n
        self.q = build_q_network(config["network"], shape, n)
        self.opt = torch.optim.RMSprop(
            self.q.parameters(),
            lr=config["lr"],
            alpha=config["rmsprop_alpha"],
            eps=config["rmsprop_eps"],
            centered=True,
        )
        cap = config["replay_capacity"]
        self.obs = np.zeros((cap, *shape), np.uint8)
        self.next_obs = np.zeros((cap, *shape), np.uint8)
        self.actions = np.zeros(cap, np.int64)
        self.rewards = np.zeros(cap, np.float32)
        self.dones = np.zeros(cap, np.float32)
        self.size = self.pos = self.t = 0
        self.rng = np.random.default_rng(seed)
        self.state, _ = self.env.reset(seed=seed)
        self.run(config["learning_starts"] + config["rollout_fragment_length"])  # the same warm-up

    def act(self) -> int:
        if self.rng.random() < epsilon_at(self.config, self.t):
            return int(self.rng.integers(self.env.action_space.n))
        with torch.no_grad():
            return int(self.q(torch.as_tensor(self.state)[None]).argmax(dim=-1)[0])

    def update(self) -> None:
        idx = self.rng.integers(0, self.size, self.config["batch_size"])
        s, s2 = torch.as_tensor(self.obs[idx]), torch.as_tensor(self.next_obs[idx])
        a, r, done = (torch.as_tensor(x[idx]) for x in (self.actions, self.rewards, self.dones))
        with torch.no_grad():
            y = r + self.config["gamma"] * (1 - done) * self.q(s2).max(dim=-1).values  # y = r + gamma max Q(s',a')
        q = self.q(s).gather(1, a[:, None]).squeeze(1)
        loss = F.mse_loss(q, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            action = self.act()
            next_state, reward, terminated, truncated, _ = self.env.step(action)
            i = self.pos
            self.obs[i], self.next_obs[i], self.actions[i] = self.state, next_state, action
            self.rewards[i], self.dones[i] = reward, float(terminated)
            self.pos, self.size = (i + 1) % len(self.obs), min(self.size + 1, len(self.obs))
            self.state = next_state
            if terminated or truncated:
                self.state, _ = self.env.reset()
            self.t += 1
            if self.t >= self.config["learning_starts"] and self.t % self.config["train_freq"] == 0:
                self.update()

    def chunk(self) -> tuple[float, float]:
        steps, started = self.config["iteration_steps"], time.perf_counter()
        self.run(steps)
        return float(steps), time.perf_counter() - started

    def stop(self) -> None:
        self.env.close()


# Where the time goes: (label, substring of the profiled function's "file:line(name)").
RLLIB_PIECES = [
    ("env runner sample (env step + inference + connectors)", "single_agent_env_runner.py", "(sample)"),
    ("  of it: module forward_exploration", "torch_rl_module.py", "(forward_exploration)"),
    ("  of it: env.step (ALE + wrappers)", "sync_vector_env.py", "(step)"),
    (
        "connector pipelines (env runner's both ways; stock: also the learner's)",
        "connector_pipeline_v2.py",
        "(__call__)",
    ),
    ("replay add (frame ring)", "frame_replay.py", "(add_episodes)"),
    ("replay sample (frame ring -> columns)", "frame_replay.py", "(sample)"),
    ("replay add (stock: episode buffer)", "episode_replay_buffer.py", "(add)"),
    ("replay sample (stock: builds an episode per item)", "episode_replay_buffer.py", "(sample)"),
    ("learner group update", "learner_group.py", "(update)"),
    (
        "  of it: learner connector (episodes -> batch; not run on a ready batch)",
        "learner_connector_pipeline.py",
        "(__call__)",
    ),
    ("  of it: minibatch slicing", "minibatch_utils.py", "(__iter__)"),
    ("  of it: forward_train", "rl_module.py", "(forward_train)"),
    ("  of it: backward", "_tensor.py", "(backward)"),
    ("  of it: optimizer step (+ RLlib's nan checks unless skipped)", "torch_learner.py", "(apply_gradients)"),
    ("weight sync learner -> env runner", "env_runner_group.py", "(sync_weights)"),
    ("metrics reduce", "metrics_logger.py", "(reduce)"),
]
PLAIN_PIECES = [
    ("env.step (ALE + wrappers)", "atari.py", "(step)"),
    ("act (epsilon-greedy forward)", "dqn_fps.py", "(act)"),
    ("update (sample + forward + backward + step)", "dqn_fps.py", "(update)"),
    ("  of it: backward", "_tensor.py", "(backward)"),
]


def profile(agent: Any, pieces: list[tuple[str, str, str]]) -> list[tuple[str, float]]:
    profiler = cProfile.Profile()
    profiler.enable()
    steps, seconds = agent.chunk()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    rows = [("total (profiled)", seconds)]
    for label, file_part, name_part in pieces:
        # the file name must match whole ("rl_module.py" is not "torch_rl_module.py"): nested same-named calls in
        # other files would be counted twice
        ct = sum(
            v[3]
            for (file, _line, name), v in stats.items()
            if file.endswith("/" + file_part) and f"({name})" == name_part
        )
        rows.append((label, ct))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=2000, help="agent steps per timed chunk")
    parser.add_argument("--warmup", type=int, default=1000, help="learning_starts (agent steps before updates)")
    parser.add_argument(
        "--fragments",
        type=int,
        nargs="+",
        default=[64],
        help="RLlib rollout_fragment_length values, one RLlib variant each (default: the trainable's)",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stock", action="store_true", help="also time RLlib's own DQN loop and episode buffer")
    _common.add_common_args(parser, repeats=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    _common.start_ray()
    config = dqn_config(args.game, args.steps, args.warmup)
    frame_skip = atari.frame_skip_for(config["env"], config["frame_skip"])
    agents: dict[str, Any] = {
        f"rllib (fragment {f})": RLlibAgent({**config, "rollout_fragment_length": f}) for f in args.fragments
    }
    if args.stock:
        agents["rllib stock loop (fragment 64)"] = RLlibAgent({**config, "rollout_fragment_length": 64}, stock=True)
    agents["plain"] = PlainAgent(config)
    fps: dict[str, list[float]] = {name: [] for name in agents}
    loads: list[float] = []
    for _ in range(args.repeats):
        for name, agent in agents.items():  # interleaved: rllib, plain, rllib, plain, ...
            with _common.ForeignLoad() as load:
                steps, seconds = agent.chunk()
            fps[name].append(steps * frame_skip / seconds)
            loads.append(load.value)

    plain = _common.median(fps["plain"])
    table = _common.Table(
        title=f"DQN env frames/s on {config['env']} (median of {args.repeats} chunks of {args.steps} agent steps)",
        columns=["variant", "frames/s", "agent steps/s", "chunks (frames/s)"],
    )
    for name in agents:
        med = _common.median(fps[name])
        table.add(name, med, med / frame_skip, " ".join(f"{v:.0f}" for v in fps[name]))
    for name in agents:
        if name != "plain":
            table.add(f"ratio {name} / plain", _common.median(fps[name]) / plain, None, "goal >= 0.7")
    table.notes = [
        f"same network ({config['network']}), preprocessing (frame skip {frame_skip}, 84x84x4 uint8), one "
        f"minibatch of {config['batch_size']} per {config['train_freq']} agent steps, RMSProp, MSE loss, epsilon "
        f"0.1; RLlib samples `fragment` steps per round, then replays fragment/{config['train_freq']} minibatches",
        f"foreign load (cores busy with other people's work) median {_common.median(loads):.2f}",
        _common.environment("1"),
    ]
    tables = [table]
    if args.profile:
        prof = _common.Table(
            title=f"Where one chunk of {args.steps} agent steps goes (cProfile, seconds)", columns=["piece", "seconds"]
        )
        profiled = [(next(iter(agents)), RLLIB_PIECES)]
        profiled += [(name, RLLIB_PIECES) for name in agents if "stock" in name] + [("plain", PLAIN_PIECES)]
        for name, pieces in profiled:
            for label, seconds in profile(agents[name], pieces):
                if seconds or "learner connector" in label:  # leave out the other replay memory's rows
                    prof.add(f"{name}: {label}", seconds)
        prof.notes = ["cProfile slows Python-heavy code more than torch kernels; read the shares, not the totals"]
        tables.append(prof)
    for agent in agents.values():
        agent.stop()
    _common.emit(tables, args.markdown, "# DQN frames per second: RLlib agent vs a minimal PyTorch loop")


if __name__ == "__main__":
    main()
