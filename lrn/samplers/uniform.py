"""The baseline: batch_size questions uniformly at random, K rollouts each."""

from __future__ import annotations

from lrn.rollout import RolloutFn
from lrn.samplers.base import Pick, Sampler


class UniformSampler(Sampler):
    def select(self, step: int, rollout_fn: RolloutFn, n: int) -> Pick:
        problems = self.draw(n)
        groups = rollout_fn(problems, self.k)
        return Pick(problems, groups, screened=groups)
