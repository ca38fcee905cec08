"""Sampling for learnability (Foster & Foerster 2025, arXiv 2502.12272).

Each step: draw pool_factor x batch_size candidates, roll out K answers for each, score each by
p(1-p) of its success rate, keep the top batch_size and reuse their rollouts for training. Ties are
broken at random: candidates arrive in random order and the sort is stable.
"""

from __future__ import annotations

from lrn.rollout import RolloutFn
from lrn.samplers.base import Pick, Sampler, learnability, top_n


class LearnabilitySampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, pool_factor: float = 4.0,
                 bessel: bool = True, mix: float = 0.0):
        super().__init__(pool, batch_size, k, seed, mix)
        self.pool_size = max(batch_size, round(pool_factor * batch_size))
        self.bessel = bessel

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        candidates = self.draw(self.pool_size)
        groups = rollout_fn(candidates, self.k)
        scores = [learnability(g, self.bessel) for g in groups]
        keep = [int(i) for i in top_n(scores, n)]
        return Pick([candidates[i] for i in keep], [groups[i] for i in keep], screened=groups,
                    screening_rollouts=(len(candidates) - len(keep)) * self.k)
