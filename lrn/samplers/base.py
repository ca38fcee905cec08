"""The sampler interface: a sampler owns *which questions* are trained on, nothing else.

Every sampler implements :meth:`Sampler.select` (n questions and K rollouts for each); the base
class adds the optional uniform ``mix``, records every rollout the sampler makes (history-based
samplers learn from all of them) and computes the stats all samplers share, so that ``lrn compare``
can rank them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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


@dataclass
class Pick:
    """What :meth:`Sampler.select` returns: the chosen questions with K rollouts each, and how it chose.

    ``screened`` holds every group looked at (for uniform: the batch itself), ``screening_rollouts``
    counts rollouts made to choose and not trained on, ``stats`` any sampler-specific extras.
    """

    problems: list[Problem]
    groups: list[list[Rollout]]
    screened: list[list[Rollout]]
    screening_rollouts: int = 0
    stats: dict[str, float] = field(default_factory=dict)


def success_rate(group: list[Rollout]) -> float:
    return sum(r.reward for r in group) / len(group)


def learnability(group: list[Rollout], bessel: bool = False) -> float:
    """p(1-p) of the group's success rate; with Bessel's correction, times K/(K-1)."""
    p = success_rate(group)
    k = len(group)
    return p * (1 - p) * (k / (k - 1) if bessel and k > 1 else 1.0)


def beta_learnability(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """E[p(1-p)] for p ~ Beta(a, b), i.e. ab / ((a+b)(a+b+1)).

    >>> float(beta_learnability(1.0, 1.0))  # uniform prior: 1/6
    0.16666666666666666
    >>> float(beta_learnability(5.0, 5.0))  # 4 right of 8 under that prior: 25/110
    0.22727272727272727
    """
    return a * b / ((a + b) * (a + b + 1))


class DecayedCounts:
    """Right and wrong answers per slot (a question, a level), each weighed ``decay`` ** (its age in steps).

    The counts are stored as of step ``last[i]`` and aged when read or added to, so a step costs
    nothing for slots that saw no rollout. State keys: ``<prefix>right``, ``<prefix>wrong``, ``<prefix>last``.
    ``unit`` names the slots in errors, which leave out the last ``spare`` slots (e.g. one for questions
    without a level).
    """

    def __init__(self, n: int, decay: float, unit: str = "questions", spare: int = 0):
        self.decay, self.unit, self.spare = decay, unit, spare
        self.right, self.wrong = np.zeros(n), np.zeros(n)
        self.last = np.zeros(n, dtype=np.int64)

    def add(self, i: int, step: int, right: float, made: int) -> None:
        w = self.decay ** (step - self.last[i])
        self.right[i] = self.right[i] * w + right
        self.wrong[i] = self.wrong[i] * w + made - right
        self.last[i] = step

    def weights(self, step: int, idx=slice(None)) -> np.ndarray:
        """Each slot's decay factor from its last update to ``step``."""
        return self.decay ** (step - self.last[idx])

    def state_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}right": self.right.copy(), f"{prefix}wrong": self.wrong.copy(),
                f"{prefix}last": self.last.copy()}

    def load_state_dict(self, state: dict, prefix: str = "") -> None:
        saved = len(state[f"{prefix}right"])
        if saved != len(self.right):
            raise ValueError(f"history covers {saved - self.spare} {self.unit}, "
                             f"the pool has {len(self.right) - self.spare}")
        self.right = np.asarray(state[f"{prefix}right"], float)
        self.wrong = np.asarray(state[f"{prefix}wrong"], float)
        self.last = np.asarray(state[f"{prefix}last"], np.int64)


def is_zero_signal(group: list[Rollout]) -> bool:
    """All answers right or all wrong: every group advantage is 0, the question teaches nothing."""
    return len({r.reward for r in group}) <= 1


def top_n(scores: np.ndarray, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of the n highest scores, best first; ties broken at random when ``rng`` is given."""
    order = rng.permutation(len(scores)) if rng is not None else np.arange(len(scores))
    return order[np.argsort(-np.asarray(scores)[order], kind="stable")][:n]


def selection_stats(screened: list[list[Rollout]], batch: list[list[Rollout]], screening_rollouts: int,
                    levels: list[int | None]) -> dict[str, float]:
    """The stats every sampler reports (see :class:`Pick` for the arguments)."""
    stats = {
        "sampler/pool_learnability": float(np.mean([learnability(g) for g in screened])),
        "sampler/batch_learnability": float(np.mean([learnability(g) for g in batch])),
        "sampler/pool_size": float(len(screened)),
        "sampler/screening_rollouts": float(screening_rollouts),
        "sampler/trained_questions": float(len(batch)),
        "train/zero_signal_frac": float(np.mean([is_zero_signal(g) for g in batch])),
    }
    counts = Counter(level for level in levels if level is not None)
    for level in sorted(counts):
        stats[f"sampler/level_frac/L{level}"] = counts[level] / len(levels)
    return stats


class Sampler:
    """Base class: subclasses implement :meth:`select`; state is the RNG (and any history)."""

    def __init__(self, pool: list[Problem], batch_size: int, k: int, seed: int, mix: float = 0.0):
        if batch_size > len(pool):
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the training pool ({len(pool)} "
                             "questions); lower it or enlarge the dataset")
        self.pool, self.batch_size, self.k, self.mix = pool, batch_size, k, mix
        self.index = {p.id: i for i, p in enumerate(pool)}
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int, exclude: set[int] | None = None) -> list[Problem]:
        """n distinct questions uniformly at random from the pool, none of those at indices ``exclude``."""
        return [self.pool[i] for i in self.draw_indices(n, exclude)]

    def draw_indices(self, n: int, exclude: set[int] | None = None) -> np.ndarray:
        if not exclude:
            return self.rng.choice(len(self.pool), size=min(n, len(self.pool)), replace=False)
        free = np.setdiff1d(np.arange(len(self.pool)), np.fromiter(exclude, dtype=np.int64))
        return self.rng.choice(free, size=min(n, len(free)), replace=False)

    def next_batch(self, step: int, rollout_fn: RolloutFn) -> Selection:
        """``batch_size`` questions: ``mix`` of them uniformly drawn, the rest by :meth:`select`."""

        def recorded(problems: list[Problem], k: int) -> list[list[Rollout]]:
            groups = rollout_fn(problems, k)
            self.record(step, groups)
            return groups

        n_mix = round(self.mix * self.batch_size)
        if n_mix < self.batch_size:
            pick = self.select(step, recorded, self.batch_size - n_mix)
        else:
            pick = Pick([], [], [])
        if n_mix:  # the uniform share: fresh questions, none already picked
            extra = self.draw(n_mix, exclude={self.index[p.id] for p in pick.problems})
            groups = recorded(extra, self.k)
            pick = Pick(pick.problems + extra, pick.groups + groups, pick.screened + groups,
                        pick.screening_rollouts, {**pick.stats, "sampler/mix_questions": float(n_mix)})
        stats = selection_stats(pick.screened, pick.groups, pick.screening_rollouts,
                                [p.level for p in pick.problems])
        return Selection(pick.problems, pick.groups, {**stats, **pick.stats})

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        raise NotImplementedError

    def record(self, step: int, groups: list[list[Rollout]]) -> None:
        """Sees every group of rollouts the sampler makes (screening and training); history samplers learn here."""

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
