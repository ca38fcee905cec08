"""Adaptive screening for learnability, after LILO's Algorithm 3 (arXiv 2502.12272).

Plain LILO spends K rollouts on each of pool_factor x batch candidates. Most candidates show all-right
or all-wrong answers after a couple of rollouts, so this sampler screens in stages:

1. draw pool_factor x batch candidates and roll out ``initial_rollouts`` answers for each;
2. while the screening budget (``budget_factor`` x batch x K rollouts, stage 1 included) lasts, rank
   the candidates by expected p(1-p) under a Beta(1, 1) prior and give ``chunk_rollouts`` more answers
   to each of the top ``n`` that still has fewer than K (stop early once all of them have K);
3. train on the top ``n`` candidates, topping each up to exactly K rollouts: every answer already made
   for them is reused.

At most (budget_factor + 1) x batch x K rollouts per step, against LILO's pool_factor x batch x K.
"""

from __future__ import annotations

import numpy as np

from lrn.rollout import Rollout, RolloutFn
from lrn.samplers.base import Pick, Sampler, beta_learnability, top_n


class AdaptiveLearnabilitySampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, pool_factor: float = 4.0,
                 initial_rollouts: int = 2, chunk_rollouts: int = 2, budget_factor: float = 1.5, mix: float = 0.0):
        super().__init__(pool, batch_size, k, seed, mix)
        self.pool_size = max(batch_size, round(pool_factor * batch_size))
        self.initial = min(initial_rollouts, k)
        self.chunk = chunk_rollouts
        self.budget = round(budget_factor * batch_size * k)

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        candidates = self.draw(self.pool_size)
        groups: list[list[Rollout]] = [list(g) for g in rollout_fn(candidates, self.initial)]
        spent, rounds = len(candidates) * self.initial, 0

        def extend(asks: list[tuple[int, int]]) -> None:
            """Roll out m more answers for each (candidate, m): one call per distinct m (usually one)."""
            for m in sorted({m for _, m in asks}):
                idx = [i for i, mi in asks if mi == m]
                for i, g in zip(idx, rollout_fn([candidates[i] for i in idx], m), strict=True):
                    groups[i].extend(g)

        def scores() -> np.ndarray:
            right = np.array([sum(r.reward for r in g) for g in groups])
            made = np.array([len(g) for g in groups])
            return beta_learnability(1.0 + right, 1.0 + made - right)

        while spent < self.budget:
            top = top_n(scores(), n)  # stable on random candidate order: ties go to a random candidate
            todo = [int(i) for i in top if len(groups[i]) < self.k]
            if not todo:
                break
            extra, asks = self.budget - spent, []
            for i in todo:
                m = min(self.chunk, self.k - len(groups[i]), extra)
                if m <= 0:
                    break
                asks.append((i, m))
                extra -= m
            extend(asks)
            spent += sum(m for _, m in asks)
            rounds += 1
        keep = [int(i) for i in top_n(scores(), n)]
        extend([(i, self.k - len(groups[i])) for i in keep if len(groups[i]) < self.k])  # top-ups to K
        kept = set(keep)
        waste = sum(len(groups[i]) for i in range(len(groups)) if i not in kept)
        return Pick([candidates[i] for i in keep], [groups[i] for i in keep], screened=groups,
                    screening_rollouts=waste,
                    stats={"sampler/adaptive_rounds": float(rounds), "sampler/screen_spent": float(spent)})
