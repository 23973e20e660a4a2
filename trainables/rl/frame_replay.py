"""The paper's replay memory D as a compact ring of single frames (Mnih et al. 2013, Algorithm 1).

Algorithm 1 stores transitions (phi_t, a_t, r_t, phi_{t+1}) in D (capacity N, the most recent N kept) and samples
random minibatches of them. phi_t is the stack of the last 4 preprocessed frames, so consecutive transitions share
3 of their 4 frames: this memory stores every 84x84 uint8 frame ONCE (7,056 B per transition, against 28,224 B for
RLlib's episode buffer that keeps each step's whole stack) and rebuilds phi_t and phi_{t+1} at sample time. It
returns ready training columns (numpy), so no per-transition episode objects are built.

Layout: a ring of ``capacity`` slots. Slot i holds one frame f_i (the newest frame of some phi) and, if an action
was taken from phi_i, that transition's a_i, r_i, terminated_i, truncated_i and ``valid[i] = True``; phi_i is the
frames of slots i-k+1 .. i, and phi_{i+1} those of slots i-k+2 .. i+1 (k = ``frame_stack``). A new segment (the
start of an episode, or a chunk of an episode that does not continue the newest slot) first writes the k frames of
its first observation, so every transition's history lies in its own segment: no episode-boundary logic is needed
at sample time (atari.FrameStack repeats the first frame after a reset, and those repeats are what gets written).
An episode's last observation (after terminal or truncation) gets a slot too, without a transition, so a
truncated transition keeps its true phi_{t+1}. A slot is sampleable while its k-frame history has not been
overwritten.

Vector observations (CartPole) are stored whole, one per slot (k = 1, no stacking axis).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

# The training columns, named as RLlib's ``Columns`` (obs, new_obs, actions, rewards, terminateds, truncateds).
OBS, NEXT_OBS, ACTIONS, REWARDS, TERMINATEDS, TRUNCATEDS = (
    "obs",
    "new_obs",
    "actions",
    "rewards",
    "terminateds",
    "truncateds",
)


class FrameReplay:
    """A uniform replay memory of ``capacity`` frames (about ``capacity`` transitions; each segment costs
    ``frame_stack - 1`` extra frames) for observations of ``obs_shape``.

    ``stacked=True``: observations are (k, *frame) stacks, oldest frame first (atari.FrameStack); only the newest
    frame of each is stored. ``stacked=False``: observations are stored whole (k = 1).
    """

    def __init__(
        self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: Any, *, stacked: bool, seed: int | None = None
    ) -> None:
        self.stacked = stacked
        self.k = obs_shape[0] if stacked else 1
        if capacity < self.k + 1:
            raise ValueError(f"capacity {capacity} holds no transition of {self.k} stacked frames")
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        frame_shape = self.obs_shape[1:] if stacked else self.obs_shape
        # np.zeros maps untouched pages lazily: a large, mostly empty memory costs only what has been written
        self.frames = np.zeros((capacity, *frame_shape), dtype=obs_dtype)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.truncated = np.zeros(capacity, bool)
        self.valid = np.zeros(capacity, bool)  # slot i starts a stored transition (phi_i, a_i, r_i, phi_{i+1})
        self.pos = 0  # the next slot to write
        self.size = 0  # slots written (<= capacity)
        self.transitions = 0  # valid slots
        self._tail_episode: str | None = None  # the unfinished episode whose latest observation is slot pos-1
        self.rng = np.random.default_rng(seed)

    # ---- storing --------------------------------------------------------------------------------------------------

    def add_episodes(self, episodes: Iterable[Any]) -> int:
        """Stores the transitions of RLlib ``SingleAgentEpisode`` chunks (as an env runner's ``sample()`` returns
        them); returns the number of transitions added."""
        added = 0
        for episode in episodes:
            added += self.add_chunk(
                episode.id_,
                np.asarray(episode.get_observations()),
                np.asarray(episode.get_actions()),
                np.asarray(episode.get_rewards()),
                terminated=episode.is_terminated,
                truncated=episode.is_truncated,
            )
        return added

    def add_chunk(
        self,
        episode_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        *,
        terminated: bool,
        truncated: bool,
    ) -> int:
        """Stores T transitions of one episode chunk: ``observations`` phi_0..phi_T (T + 1 of them), ``actions`` and
        ``rewards`` a_0..a_{T-1}, r_0..r_{T-1}; ``terminated``/``truncated``: the chunk ends its episode."""
        steps = len(actions)
        if steps == 0:
            return 0
        if len(observations) != steps + 1 or len(rewards) != steps:
            raise ValueError(
                f"a chunk of {steps} actions needs {steps + 1} observations and {steps} rewards, got "
                f"{len(observations)} and {len(rewards)}"
            )
        if steps + self.k > self.capacity:
            raise ValueError(f"a chunk of {steps} steps does not fit a replay memory of {self.capacity} frames")
        newest = observations[:, -1] if self.stacked else observations  # the frame each phi_t adds
        if episode_id == self._tail_episode and self.size:
            first = (self.pos - 1) % self.capacity  # phi_0 of this chunk is the newest slot already
        else:
            # a new segment: the k frames of phi_0 (after a reset: the first frame k times), no transitions
            head = observations[0] if self.stacked else observations[:1]
            first = self._write(head)[-1]
        slots = self._write(newest[1:])  # phi_1 .. phi_T
        starts = np.concatenate([[first], slots[:-1]])  # transition t leaves from phi_t's slot
        self.actions[starts] = actions
        self.rewards[starts] = rewards
        self.terminated[starts] = False
        self.truncated[starts] = False
        self.terminated[starts[-1]] = terminated
        self.truncated[starts[-1]] = truncated
        self.valid[starts] = True
        self.transitions += steps
        self._tail_episode = None if (terminated or truncated) else episode_id
        return steps

    def _write(self, frames: np.ndarray) -> np.ndarray:
        """Writes frames into the next slots (overwriting the oldest); returns their slot indices."""
        slots = (self.pos + np.arange(len(frames))) % self.capacity
        self.transitions -= int(self.valid[slots].sum())  # the oldest transitions leave D
        self.valid[slots] = False
        self.frames[slots] = frames
        self.pos = int(slots[-1] + 1) % self.capacity
        self.size = min(self.size + len(frames), self.capacity)
        return slots

    # ---- sampling -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Transitions stored (up to k - 1 of the oldest may have lost part of their frame history and are skipped
        by :meth:`sample`)."""
        return self.transitions

    def sample(self, n: int) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly at random (with replacement) from D, as training columns:
        obs phi_j, new_obs phi_{j+1}, actions a_j, rewards r_j, terminateds, truncateds."""
        if self.transitions == 0:
            raise ValueError("the replay memory holds no transition yet")
        chosen = np.empty(0, np.int64)
        for _ in range(1000):  # rejection: a few slots hold no transition (segment heads, last observations)
            candidates = self.rng.integers(0, self.size, 2 * (n - len(chosen)) + 8)
            age = (self.pos - 1 - candidates) % self.capacity  # 0: the newest slot
            ok = self.valid[candidates] & (age <= self.size - self.k)  # all k frames of phi_j still stored
            chosen = np.concatenate([chosen, candidates[ok]])
            if len(chosen) >= n:
                break
        else:
            raise ValueError(f"no sampleable transition among {self.size} slots (capacity too small for the chunks?)")
        j = chosen[:n]
        window = (j[:, None] + np.arange(1 - self.k, 2)) % self.capacity  # slots j-k+1 .. j+1
        frames = self.frames[window]  # (n, k + 1, *frame)
        if self.stacked:
            obs, next_obs = frames[:, :-1], frames[:, 1:]  # phi_j = f_{j-k+1..j}, phi_{j+1} = f_{j-k+2..j+1}
        else:
            obs, next_obs = frames[:, 0], frames[:, 1]
        return {
            OBS: obs,
            NEXT_OBS: next_obs,
            ACTIONS: self.actions[j],
            REWARDS: self.rewards[j],
            TERMINATEDS: self.terminated[j],
            TRUNCATEDS: self.truncated[j],
        }

    # ---- size and checkpoints -------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated arrays (pages not yet written are not resident)."""
        return sum(
            a.nbytes for a in (self.frames, self.actions, self.rewards, self.terminated, self.truncated, self.valid)
        )

    def get_state(self) -> dict[str, Any]:
        """The stored slots (only the ``size`` written ones) and the cursor; restores with :meth:`set_state`."""
        n = self.size
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": n,
            "transitions": self.transitions,
            "frames": self.frames[:n].copy(),
            "actions": self.actions[:n].copy(),
            "rewards": self.rewards[:n].copy(),
            "terminated": self.terminated[:n].copy(),
            "truncated": self.truncated[:n].copy(),
            "valid": self.valid[:n].copy(),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay state of capacity {state['capacity']} into a memory of {self.capacity}")
        n = state["size"]
        for name in ("frames", "actions", "rewards", "terminated", "truncated", "valid"):
            getattr(self, name)[:n] = state[name]
        self.valid[n:] = False
        self.pos, self.size, self.transitions = state["pos"], n, state["transitions"]
        self._tail_episode = None  # the env runner starts new episodes after a restore
        self.rng.bit_generator.state = state["rng"]
