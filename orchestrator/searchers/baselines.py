"""The baselines every controller claim is compared with, over the same space and budget.

* Random search: every decision uniform and independent.
* Regularized evolution (Real et al. 2019, "aging evolution", alg. 1): keep the ``population`` most recent
  children; a new child is the best of ``sample`` random members with one decision changed to another value; the
  oldest member dies whatever its reward. Until the population is full (and while its first members are still
  training), children are random.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from orchestrator.searchers.base import NasSearcher


class RandomSearcher(NasSearcher):
    def propose(self) -> tuple[list[int], dict[str, Any]]:
        return [int(self.rng.integers(n)) for n in self.space.sizes], {}


class EvolutionSearcher(NasSearcher):
    def __init__(self, *args: Any, population: int = 8, sample: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sample = sample
        self.population: deque[dict[str, Any]] = deque(maxlen=population)  # maxlen: appending kills the oldest

    def propose(self) -> tuple[list[int], dict[str, Any]]:
        sizes = self.space.sizes
        if len(self.population) < self.population.maxlen:
            return [int(self.rng.integers(n)) for n in sizes], {}
        picks = self.rng.choice(len(self.population), size=min(self.sample, len(self.population)), replace=False)
        parent = max((self.population[i] for i in picks), key=lambda r: r["reward"])
        child = list(parent["tokens"])
        mutable = [i for i, n in enumerate(sizes) if n > 1]
        d = int(self.rng.choice(mutable))
        child[d] = int((child[d] + 1 + self.rng.integers(sizes[d] - 1)) % sizes[d])  # any *other* value
        return child, {}

    def observe(self, record: dict[str, Any]) -> None:
        self.population.append(record)
