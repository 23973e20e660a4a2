"""The ``play`` tool of every RL trainable with a checkpoint (dqn, crr, bc): full episodes with a trained policy.

    returns = registry.tool("play")(checkpoint_dir, episodes=5, gif_path="pong.gif", seed=0)

The checkpoint's ``trainable.json`` (written by :func:`trainables.rl.common.run_algorithm`) names the trainable and
its config, so one function plays any of them the way that trainable evaluates: the same environment (Atari
preprocessing for ALE games) with the game's own, unclipped score, greedy actions, and with probability
``eval_epsilon`` (DQN: the paper's 0.05; offline algorithms have none: 0) a uniformly random action instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from trainables import registry
from trainables.checkpoint import CheckpointError
from trainables.registry import ConfigError
from trainables.rl import atari
from trainables.rl.common import TRAINABLE_FILE
from trainables.rl.offline import load_checkpoint_policy

MAX_GIF_FRAMES = 5000


def read_checkpoint(checkpoint_dir: str) -> tuple[str, dict[str, Any]]:
    """The trainable that wrote ``checkpoint_dir`` and its config (over the trainable's current defaults, so a
    checkpoint from before a key was added still plays; keys the trainable no longer has are ignored).

    The config is type-checked and validated as a sweep's would be (its dataset aside: playing needs the env, not
    the data the policy learned from), so a wrong ``trainable.json`` is one :class:`CheckpointError` naming it."""
    path = os.path.join(checkpoint_dir, TRAINABLE_FILE)
    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(f"checkpoint {checkpoint_dir} does not exist")
    try:
        with open(path) as handle:
            produced = json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint_dir} is not an RL checkpoint: it has no {TRAINABLE_FILE}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint file {path}: not JSON ({type(err).__name__}: {err})") from None
    if not (isinstance(produced, dict) and isinstance(produced.get("trainable"), str)
            and isinstance(produced.get("config"), dict)):
        raise CheckpointError(f"corrupt checkpoint file {path}: expected a JSON object with a 'trainable' name and "
                              "a 'config' object")
    name, stored = produced["trainable"], produced["config"]
    try:
        spec = registry.get(name)
    except ConfigError as err:
        raise CheckpointError(f"checkpoint file {path}: {err}") from None
    known = {key: value for key, value in stored.items() if key in spec.defaults}
    if "data" in known:
        known["data"] = ""  # validate_offline would check that the dataset is still there
    try:
        config = spec.resolve(known)
    except ConfigError as err:
        raise CheckpointError(f"corrupt checkpoint file {path}: its config does not fit '{name}': {err}") from None
    if "data" in stored:
        config["data"] = stored["data"]
    return name, config


def play(checkpoint_dir: str, episodes: int = 5, gif_path: str | None = None, seed: int = 0) -> list[float]:
    """Play ``episodes`` full games with the checkpoint's policy and return their scores; ``gif_path``: also write
    the first game's frames as an animated GIF. Episode ``i`` resets the env with seed ``seed + i`` and the random
    actions come from a generator seeded with ``seed``, so a replay scores the same."""
    _, config = read_checkpoint(checkpoint_dir)
    env = atari.make_env(
        {**atari.env_config_from(config), "clip_rewards": False}, render_mode="rgb_array" if gif_path else None
    )
    act = load_checkpoint_policy(checkpoint_dir, env.action_space, observation_space=env.observation_space)
    epsilon = float(config.get("eval_epsilon", 0.0))
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    frames: list[np.ndarray] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            if rng.random() < epsilon:  # with probability epsilon a uniformly random action, else the greedy one
                action = int(rng.integers(env.action_space.n)) if hasattr(env.action_space, "n") else (
                    env.action_space.sample())
            else:
                action = act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
            if gif_path and episode == 0 and len(frames) < MAX_GIF_FRAMES:
                frames.append(render(env, obs))
        returns.append(total)
    env.close()
    if gif_path and frames:
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(gif_path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return returns


def render(env: Any, obs: np.ndarray) -> np.ndarray:
    """The env's RGB frame; for vector tasks whose renderer needs pygame (not a dependency), a drawing of the state:
    CartPole's cart and pole, else one bar per observation value."""
    import gymnasium as gym

    try:
        return env.render()
    except gym.error.DependencyNotInstalled:
        pass
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (240, 160), "white")
    draw = ImageDraw.Draw(image)
    if obs.shape == (4,):  # CartPole: x in [-2.4, 2.4], pole angle theta (radians, 0 = upright)
        x = 120 + float(obs[0]) / 2.4 * 100
        draw.line([(0, 120), (240, 120)], fill="black")
        draw.rectangle([x - 15, 110, x + 15, 125], fill="black")
        tip = (x + 70 * np.sin(float(obs[2])), 110 - 70 * np.cos(float(obs[2])))
        draw.line([(x, 110), tip], fill=(200, 120, 60), width=5)
    else:
        width = 240 / max(len(obs), 1)
        for i, value in enumerate(np.clip(obs, -1, 1)):
            draw.rectangle(
                [i * width + 2, 80 - 70 * max(value, 0), (i + 1) * width - 2, 80 - 70 * min(value, 0)], fill="steelblue"
            )
    return np.asarray(image)


# The tools every RL trainable with a checkpoint registers (``tools={**RL_TOOLS, ...}``): ``play``, and
# ``checkpoint_file``, the name of the file that marks an RL checkpoint directory (``registry.tool("checkpoint_file")``
# is that string; the file is JSON with ``trainable`` and ``config``).
RL_TOOLS: dict[str, Any] = {"play": play, "checkpoint_file": TRAINABLE_FILE}
# What an RL trainable's code raises when the user's input is wrong (``register(..., user_errors=...)``): an
# unreadable or mismatched checkpoint (play, record's checkpoint:PATH, a resumed trial). The CLIs print it as one line.
RL_USER_ERRORS: tuple[type[BaseException], ...] = (CheckpointError,)
