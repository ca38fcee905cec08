"""The sampler interface: a sampler owns *which questions* are trained on, nothing else."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from lrn.config import ConfigError
from lrn.rollout import Rollout, RolloutFn
from lrn.tasks import Problem


@dataclass
class Selection:
    """This step's questions, their K rollouts each (None: the trainer rolls them out) and stats."""

    problems: list[Problem]
    rollouts: list[list[Rollout]] | None
    stats: dict[str, float]


def success_rate(group: list[Rollout]) -> float:
    return sum(r.reward for r in group) / len(group)


def learnability(group: list[Rollout], bessel: bool = False) -> float:
    """p(1-p) of the group's success rate; with Bessel's correction, times K/(K-1)."""
    p = success_rate(group)
    k = len(group)
    return p * (1 - p) * (k / (k - 1) if bessel and k > 1 else 1.0)


def is_zero_signal(group: list[Rollout]) -> bool:
    """All answers right or all wrong: every group advantage is 0, the question teaches nothing."""
    return len({r.reward for r in group}) <= 1


def selection_stats(screened: list[list[Rollout]], batch: list[list[Rollout]], screening_rollouts: int,
                    levels: list[int | None]) -> dict[str, float]:
    """The stats every sampler reports, so that `lrn compare` can rank them.

    ``screened`` holds every group the sampler looked at (for uniform: the batch itself);
    ``screening_rollouts`` counts rollouts made to choose the batch that are not trained on.
    """
    stats = {
        "sampler/pool_learnability": float(np.mean([learnability(g) for g in screened])),
        "sampler/batch_learnability": float(np.mean([learnability(g) for g in batch])),
        "sampler/pool_size": float(len(screened)),
        "sampler/screening_rollouts": float(screening_rollouts),
        "train/zero_signal_frac": float(np.mean([is_zero_signal(g) for g in batch])),
    }
    counts = Counter(level for level in levels if level is not None)
    for level in sorted(counts):
        stats[f"sampler/level_frac/L{level}"] = counts[level] / len(levels)
    return stats


class Sampler:
    """Base class: subclasses implement :meth:`next_batch`; state is the RNG (and any history)."""

    def __init__(self, pool: list[Problem], batch_size: int, k: int, seed: int):
        if batch_size > len(pool):
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the training pool ({len(pool)} "
                             "questions); lower it or enlarge the dataset")
        self.pool, self.batch_size, self.k = pool, batch_size, k
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> list[Problem]:
        """n distinct questions uniformly at random from the pool."""
        idx = self.rng.choice(len(self.pool), size=min(n, len(self.pool)), replace=False)
        return [self.pool[i] for i in idx]

    def next_batch(self, step: int, rollout_fn: RolloutFn) -> Selection:
        raise NotImplementedError

    def observe(self, selection: Selection) -> None:
        """Called with the rollouts that were trained on; history-based samplers learn from it."""

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
