"""Architecture searchers as Ray Tune ``Searcher``s: the LSTM controller trained with REINFORCE (Zoph & Le) or PPO
(MnasNet), and the random-search and regularized-evolution baselines. :func:`make_searcher` picks one by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.searchers.base import NasSearcher
from orchestrator.searchers.baselines import EvolutionSearcher, RandomSearcher
from orchestrator.searchers.ppo import PPOSearcher
from orchestrator.searchers.reinforce import ReinforceSearcher
from orchestrator.searchers.reward import REWARDS, reward

SEARCHERS: dict[str, type[NasSearcher]] = {
    "ppo": PPOSearcher, "reinforce": ReinforceSearcher, "random": RandomSearcher, "evolution": EvolutionSearcher,
}


def make_searcher(name: str, space: str, base_config: Mapping[str, Any], **kwargs: Any) -> NasSearcher:
    return SEARCHERS[name](space, base_config, **kwargs)


__all__ = ["REWARDS", "SEARCHERS", "NasSearcher", "make_searcher", "reward"]
