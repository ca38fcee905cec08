"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476): filter out zero-signal groups.

Each draw takes ``draw_factor`` x batch fresh questions uniformly, rolls out K answers for each and
keeps the groups whose rewards are not all equal; draws repeat until the batch is full or
``max_draws`` is reached. Surplus mixed groups are dropped. When the draws run out, the batch is
filled with zero-signal groups (the last resort, reported in ``train/zero_signal_frac``) so that
every step trains on the same number of questions.
"""

from __future__ import annotations

from lrn.rollout import Rollout, RolloutFn
from lrn.samplers.base import Pick, Sampler, is_zero_signal
from lrn.tasks import Problem


class DynamicFilterSampler(Sampler):
    def __init__(self, pool, batch_size: int, k: int, seed: int, max_draws: int = 8, draw_factor: float = 1.0,
                 mix: float = 0.0):
        super().__init__(pool, batch_size, k, seed, mix)
        self.max_draws = max_draws
        self.draw_size = max(1, round(draw_factor * batch_size))

    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        mixed: list[tuple[Problem, list[Rollout]]] = []
        flat: list[tuple[Problem, list[Rollout]]] = []
        screened: list[list[Rollout]] = []
        seen: set[int] = set()
        draws = 0
        while len(mixed) < n and draws < self.max_draws and len(seen) < len(self.pool):
            idx = self.draw_indices(self.draw_size, exclude=seen)
            seen.update(int(i) for i in idx)
            problems = [self.pool[i] for i in idx]
            groups = rollout_fn(problems, self.k)
            draws += 1
            screened.extend(groups)
            for p, g in zip(problems, groups, strict=True):
                (flat if is_zero_signal(g) else mixed).append((p, g))
        chosen = (mixed + flat)[:n]  # mixed groups first, in draw order; zero-signal ones only if short
        return Pick([p for p, _ in chosen], [g for _, g in chosen], screened,
                    screening_rollouts=(len(screened) - len(chosen)) * self.k,
                    stats={"sampler/draws": float(draws), "sampler/filled_zero_signal": float(max(0, n - len(mixed)))})
