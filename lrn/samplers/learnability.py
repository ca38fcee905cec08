"""Sampling for learnability (Foster & Foerster 2025, arXiv 2502.12272).

Each step: draw pool_factor x batch_size candidates, roll out K answers for each, score each by
p(1-p) of its success rate, keep the top batch_size and reuse their rollouts for training. Ties are
broken at random: candidates arrive in random order and the sort is stable.
"""

from __future__ import annotations

from lrn.rollout import RolloutFn
from lrn.samplers.base import Sampler, Selection, learnability, selection_stats


class LearnabilitySampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, pool_factor: float = 4.0,
                 bessel: bool = True):
        super().__init__(pool, batch_size, k, seed)
        self.pool_size = max(batch_size, round(pool_factor * batch_size))
        self.bessel = bessel

    def next_batch(self, step: int, rollout_fn: RolloutFn) -> Selection:
        candidates = self.draw(self.pool_size)
        groups = rollout_fn(candidates, self.k)
        scores = [learnability(g, self.bessel) for g in groups]
        keep = sorted(range(len(candidates)), key=lambda i: -scores[i])[: self.batch_size]
        chosen = [groups[i] for i in keep]
        screening = (len(candidates) - len(keep)) * self.k
        stats = selection_stats(groups, chosen, screening, [candidates[i].level for i in keep])
        return Selection([candidates[i] for i in keep], chosen, stats)
