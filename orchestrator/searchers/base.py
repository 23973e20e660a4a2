"""What every architecture searcher shares: a Tune ``Searcher`` that proposes token sequences and learns from rewards.

Bookkeeping lives here, once: the trial budget (the searcher says FINISHED, so ``TuneConfig(num_samples=-1)``),
the trials in flight (``pending``: tokens and the log-probability they were sampled with), the reward of every
completed child, and save/restore of the whole state (controller weights, baseline, optimizer, RNGs, pending
trials), so a resumed search continues exactly, and the same next suggestions come out.

The searcher knows the child trainable only through its registered ``architecture_search`` declaration
(:class:`trainables.registry.ArchitectureSearch`): the spaces, the config keys it writes, the accuracy and latency
metrics it reads. A child's reward uses the last result Tune hands to ``on_trial_complete``: the final epoch's
accuracy, or for a child that ASHA stopped early, its last reported accuracy (the latency is in every report). A
child that errors is recorded without a reward and teaches the searcher nothing.
Subclasses implement :meth:`propose` (next tokens) and :meth:`observe` (learn from one scored child).
"""

from __future__ import annotations

import abc
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ray.tune.search import Searcher

from orchestrator.searchers.reward import reward
from trainables import registry

SEARCH_TOOL = "architecture_search"  # the registered declaration a child trainable of a search provides


class NasSearcher(Searcher, abc.ABC):
    def __init__(self, space: str, base_config: Mapping[str, Any], *, trials: int, reward_kind: str = "soft",
                 target_ms: float = 1.0, seed: int = 0, num_blocks: int = 0,
                 search: registry.ArchitectureSearch | None = None) -> None:
        self.search: registry.ArchitectureSearch = search or registry.tool(SEARCH_TOOL)
        super().__init__(metric=self.search.accuracy, mode="max")
        self.space_name, self.num_blocks = space, num_blocks
        self.base_config = dict(base_config)
        self.trials, self.reward_kind, self.target_ms = trials, reward_kind, target_ms
        self.issued = 0
        self.pending: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def space(self) -> Any:
        """The space's decisions: ``sizes`` (values per decision) and ``describe(tokens)``."""
        return self.search.get_space(self.space_name, self.num_blocks)

    # -- what a method supplies --------------------------------------------------------------------------------
    @abc.abstractmethod
    def propose(self) -> tuple[list[int], dict[str, Any]]:
        """The next tokens, and anything :meth:`observe` will need about them (e.g. their log-probability)."""

    def observe(self, record: dict[str, Any]) -> None:
        """Learn from one completed child: ``record`` has tokens, reward, accuracy, latency and propose's extras."""

    # -- Tune's Searcher API -------------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the metric is fixed (accuracy + latency -> reward); Tune's metric/mode only steer ASHA

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.issued >= self.trials:
            return Searcher.FINISHED
        tokens, extras = self.propose()
        index = self.issued
        self.issued += 1
        self.pending[trial_id] = {"tokens": tokens, "index": index, **extras}
        return self.search.child_config(self.base_config, self.space_name, self.num_blocks, tokens, index)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self.pending.pop(trial_id, None)
        if entry is None:
            return
        record = {**entry, "trial_id": trial_id, "arch": self.space.describe(entry["tokens"])}
        accuracy, latency = self.search.accuracy, self.search.latency
        if error or not result or accuracy not in result or latency not in result:
            self.history.append({**record, "reward": None})
            return
        record.update(accuracy=float(result[accuracy]), latency_ms=float(result[latency]),
                      reward=self.score(result))
        self.history.append(record)
        self.observe(record)

    def score(self, result: Mapping[str, Any]) -> float:
        return reward(float(result[self.search.accuracy]), float(result[self.search.latency]), self.target_ms,
                      self.reward_kind)

    # -- state ---------------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["generator"] = self.generator.get_state()  # a torch.Generator does not pickle; its state does
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(state["generator"])
        self.__dict__.update({**state, "generator": generator})

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
