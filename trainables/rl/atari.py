"""Atari preprocessing of Mnih et al. (2013), as gymnasium wrappers, and the env factory RLlib and ``play`` share.

The paper's pipeline, wrapper by wrapper (``make_env``):

1. ``gym.make("ALE/<Game>-v5", frameskip=1, repeat_action_probability=...)``: v5 would already skip 4 frames, so we
   ask for every frame and skip ourselves (else the agent acts every 16th frame). v5 also defaults to sticky actions
   (p = 0.25, Machado et al. 2018); the paper's emulator was deterministic, so ``sticky_actions`` defaults to 0.
2. gymnasium's ``AtariPreprocessing``: repeat the action for ``frame_skip`` frames (k = 4; 3 for Space Invaders,
   whose lasers blink with period 4), grayscale from the emulator, resize to 84x84 (OpenCV, INTER_AREA), uint8.
   It max-pools the last two raw frames of each skip (a 2015 Nature detail against sprite flicker). The 2013 paper
   crops a 110x84 downsample to 84x84; the 2015 paper resizes directly, which is what we do (the issue allows both).
   Optional no-op starts (``noop_max``, 2015's evaluation protocol; 0 = the 2013 paper).
3. ``ClipReward``: r -> sign(r) in {-1, 0, +1} (training only; evaluation sees the game's score).
4. ``FrameStack``: the last 4 preprocessed frames stacked, oldest first, as one uint8 array of shape (4, 84, 84)
   (channels first, as the network wants them). Stacking happens here, not in RLlib's frame-stacking connectors,
   which crash DQN in Ray 2.60.

Episodes are full games (no end-of-life terminal signal), so returns are per game as in the paper's tables.
Vector-observation tasks (``CartPole-v1``) pass through untouched.

Memory: an observation is 4 * 84 * 84 = 28,224 bytes as uint8. RLlib's episode replay buffer would keep every
step's stacked observation (measured: 28,252 B per transition after 4,096 Pong steps, about 28 GB for 1M), so
``trainables.rl.dqn`` replays from ``trainables.rl.frame_replay``, the paper's ring of single frames: 7,056 B per
transition, 7.1 GB for the default (and the paper's) 1M. Float frames would cost 4x more: we keep uint8 end to end
and scale by 1/255 inside the network.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from trainables.registry import ConfigError

# The seven games of the paper's Table 1, by display name -> ALE ROM id.
PAPER_GAMES: dict[str, str] = {
    "Beam Rider": "BeamRider",
    "Breakout": "Breakout",
    "Enduro": "Enduro",
    "Pong": "Pong",
    "Q*bert": "Qbert",
    "Seaquest": "Seaquest",
    "Space Invaders": "SpaceInvaders",
}
# The paper acts every 3rd frame in Space Invaders (its lasers are invisible on every 4th frame); 4 elsewhere.
PAPER_FRAME_SKIP: dict[str, int] = {"SpaceInvaders": 3}

ENV_NAME = "deeprepro_dqn_env"  # the name ``ray.tune.register_env`` gives to :func:`make_env`

ENV_DEFAULTS: dict[str, Any] = {
    "env": "ALE/Pong-v5",
    "frame_skip": 0,  # 0 = the paper's choice for the game (4, or 3 for Space Invaders)
    "frame_stack": 4,
    "screen_size": 84,
    "noop_max": 0,  # random no-op starts; 0 as in the 2013 paper (2015: up to 30)
    "sticky_actions": 0.0,  # ALE v5's default is 0.25; the paper's emulator was deterministic
    "clip_rewards": True,
}


def resolve_env_id(name: str) -> str:
    """A gymnasium id for ``name``: a paper game name ("Q*bert", "space invaders", "SpaceInvaders") -> ALE v5 id.

    Anything else (``ALE/Pong-v5``, ``CartPole-v1``) is returned unchanged.
    """
    key = name.replace("*", "").replace(" ", "").replace("_", "").lower()
    for display, rom in PAPER_GAMES.items():
        if key in (display.replace("*", "").replace(" ", "").lower(), rom.lower()):
            return f"ALE/{rom}-v5"
    return name


def is_atari(env_id: str) -> bool:
    return resolve_env_id(env_id).startswith("ALE/")


def frame_skip_for(env_id: str, frame_skip: int = 0) -> int:
    """Frames per agent step: ``frame_skip`` if set (> 0), else the paper's (3 for Space Invaders, 4 otherwise);
    1 for non-Atari tasks."""
    env_id = resolve_env_id(env_id)
    if not env_id.startswith("ALE/"):
        return 1
    if frame_skip > 0:
        return frame_skip
    rom = env_id.split("/", 1)[1].split("-", 1)[0]
    return PAPER_FRAME_SKIP.get(rom, 4)


class ClipReward(gym.RewardWrapper):
    """r -> sign(r): the paper clips every positive reward to +1 and negative to -1, so one learning rate fits all
    games' score scales."""

    def reward(self, reward: float) -> float:
        return float(np.sign(reward))


class FrameStack(gym.Wrapper):
    """The last ``k`` frames as one uint8 array (k, H, W), oldest first (index k-1 is the newest frame).

    On reset the first frame fills all k slots, so the first observation already has the network's input shape.
    """

    def __init__(self, env: gym.Env, k: int = 4) -> None:
        super().__init__(env)
        space = env.observation_space
        if space.dtype != np.uint8 or len(space.shape) != 2:
            raise ConfigError(f"FrameStack wants uint8 (H, W) frames, got {space.dtype} {space.shape}")
        self.k = k
        self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=k)
        self.observation_space = gym.spaces.Box(0, 255, (k, *space.shape), np.uint8)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        frame, info = self.env.reset(**kwargs)
        for _ in range(self.k):
            self.frames.append(frame)
        return self._stacked(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(frame)  # the deque drops the oldest
        return self._stacked(), reward, terminated, truncated, info

    def _stacked(self) -> np.ndarray:
        return np.stack(self.frames, axis=0)


def env_config_from(config: Mapping[str, Any]) -> dict[str, Any]:
    """The env's keys of a trainable config (what RLlib passes to the env creator as ``env_config``)."""
    return {k: config.get(k, v) for k, v in ENV_DEFAULTS.items()}


def make_env(config: Mapping[str, Any] | None = None, *, render_mode: str | None = None) -> gym.Env:
    """The paper's preprocessed env for ``config["env"]`` (keys of :data:`ENV_DEFAULTS`; missing keys default).

    Used by RLlib through :func:`register` and by ``play``. Non-Atari ids are made as they are.
    """
    cfg = {**ENV_DEFAULTS, **dict(config or {})}
    env_id = resolve_env_id(str(cfg["env"]))
    if not env_id.startswith("ALE/"):
        return gym.make(env_id, render_mode=render_mode)
    import ale_py

    gym.register_envs(ale_py)
    # frameskip=1: AtariPreprocessing skips; v5's own skip of 4 would make it 16 (NOTES).
    env = gym.make(env_id, frameskip=1, repeat_action_probability=float(cfg["sticky_actions"]),
                   render_mode=render_mode)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=int(cfg["noop_max"]), frame_skip=frame_skip_for(env_id, int(cfg["frame_skip"])),
        screen_size=int(cfg["screen_size"]), terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False,
    )
    if cfg["clip_rewards"]:
        env = ClipReward(env)
    return FrameStack(env, int(cfg["frame_stack"]))


def register() -> str:
    """Register :func:`make_env` with Ray Tune under :data:`ENV_NAME` (idempotent); returns the name."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, lambda env_ctx: make_env(dict(env_ctx)))
    return ENV_NAME
